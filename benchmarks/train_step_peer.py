"""The peer of benchmarks/train_step_speed.py: open_clip's CLIP + ClipLoss + AdamW.

Runs under the peer interpreter (torch + open_clip; README "Throughput"), never the
project's. Builds open_clip's CLIP at the given dimensions (ViT without class
token, mean pooling; text tower with open_clip's causal mask and EOS pooling),
warms up (and compiles, --mode compile), on --device (cpu, or cuda for
benchmarks/device_step.py, with --bf16 autocast), then reads one integer n per stdin line,
runs n training steps on a fixed random batch and answers one JSON line
{"seconds": ...}; a line "parts R" answers {"parts": {part: median seconds of R calls}}
for the eager forward + backward of each tower, the loss and the optimizer update. The
first line it writes describes the setup.
"""
import argparse
import importlib.machinery
import json
import os
import sys
import time
import types


def stub_torchvision():
    """open_clip imports torchvision for its preprocessing transforms and FrozenBatchNorm2d,
    neither of which a training step here uses. PyPI's torchvision wheels need the CUDA
    torch build, so with the CPU torch wheel these names are placeholders."""
    class Placeholder(type):
        def __getattr__(cls, name):
            return cls

    class Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Placeholder(name, (), {})

    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.ops", "torchvision.ops.misc"):
        mod = Module(name)
        mod.__path__ = []
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = mod


def time_parts(model, loss_fn, opt, images, tokens, reps):
    """{part: median seconds} of eager forward + backward parts, named as the project's
    breakdown: each tower (sum of its output), the loss on fixed features, AdamW's update."""
    import statistics
    import torch

    def tower(encode, x):
        def run():
            model.zero_grad(set_to_none=True)
            encode(x).sum().backward()
        return run

    with torch.no_grad():
        feats = [model.encode_image(images, normalize=True).clone().requires_grad_(True),
                 model.encode_text(tokens, normalize=True).clone().requires_grad_(True)]

    def loss():
        for f in feats:
            f.grad = None
        loss_fn(feats[0], feats[1], model.logit_scale.exp()).backward()

    def update():
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()

    parts = {"image tower": tower(model.encode_image, images),
             "text tower (captions)": tower(model.encode_text, tokens),
             "loss: image_text": loss, "optimizer (AdamW update)": update}
    result = {}
    for name, run in parts.items():
        run()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        result[name] = statistics.median(times)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("eager", "compile"), default="eager")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--max_len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--embed_dim", type=int, default=128)
    # tower dimensions: the project's "mu" variants unless given (benchmarks/device_step.py
    # passes those of its config)
    for tower, layers in (("image", 4), ("text", 3)):
        ap.add_argument(f"--{tower}_width", type=int, default=128)
        ap.add_argument(f"--{tower}_layers", type=int, default=layers)
        ap.add_argument(f"--{tower}_heads", type=int, default=4)
        ap.add_argument(f"--{tower}_mlp", type=int, default=384)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, float32 weights (open_clip's amp_bf16)")
    args = ap.parse_args()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])

    import torch
    torch.set_num_threads(args.threads)
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 -- any failure: the wheel does not load with this torch
        stub_torchvision()
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=args.image_layers, width=args.image_width,
                           head_width=args.image_width // args.image_heads,
                           mlp_ratio=args.image_mlp / args.image_width, patch_size=args.patch,
                           image_size=args.image_size, pool_type="avg", no_ln_pre=True)
    text = CLIPTextCfg(context_length=args.max_len, vocab_size=args.vocab, width=args.text_width,
                       heads=args.text_heads, layers=args.text_layers,
                       mlp_ratio=args.text_mlp / args.text_width)
    device = torch.device(args.device)
    model = CLIP(args.embed_dim, vision, text).to(device)
    model.train()
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    tokens = torch.randint(4, args.vocab, (args.batch, args.max_len), generator=g).to(device)

    def forward_loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = model(images, tokens)
            if isinstance(out, dict):
                out = (out["image_features"], out["text_features"], out["logit_scale"])
            return loss_fn(out[0], out[1], out[2])

    fwd = torch.compile(forward_loss) if args.mode == "compile" else forward_loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd()
        loss.backward()
        opt.step()
        return loss

    t = time.perf_counter()
    for _ in range(2):
        loss = step()
    warmup = time.perf_counter() - t
    if not torch.isfinite(loss):
        sys.exit("peer: non-finite loss")
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()),
                      "torch": torch.__version__, "open_clip": open_clip.__version__,
                      "threads": torch.get_num_threads(), "warmup_s": warmup,
                      "device": str(device), "bf16": args.bf16}), flush=True)
    for line in sys.stdin:
        if line.startswith("parts"):
            print(json.dumps({"parts": time_parts(model, loss_fn, opt, images, tokens,
                                                  int(line.split()[1]))}), flush=True)
            continue
        n = int(line)
        t = time.perf_counter()
        for _ in range(n):
            loss = step()
        loss = loss.item()
        if loss != loss:
            sys.exit("peer: non-finite loss")
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)


if __name__ == "__main__":
    main()
