"""The throughput issue's accelerator check (issue 18, item 5), prepared for a lent GPU.

  bash benchmarks/device_check.sh            # on the device machine (README, "Throughput")
  python benchmarks/device_step.py --config=configs/cc3m.py --batches=256,1024 --peer=python3 --out=DIR

In one process, on the default backend's first device:
1. ceilings: a bf16 n x n x n matmul (TFLOP/s) and a streaming copy (GB/s, bytes read +
   written), medians of --repeats timed calls, rotating over three random inputs;
2. for each global batch in --batches: the trainer's jitted step (`train_step_speed.ProjectStep`:
   `train.make_train_step` + `train.jit_train_step`, the config's towers, dtype and loss terms)
   on a random batch of the config's shapes, compiled once: images/s (median of --repeats x
   --steps steps), the step's FLOPs by XLA's cost analysis, the towers' model FLOPs counted from
   the config (`model_flops`), MFU = model FLOPs/s over --peak_tflops (the datasheet's dense
   bf16 rate; 989 for H100/H200 SXM) and over the measured matmul ceiling, and memory: the
   compiled step's temporary bytes, the loss terms' alone (forward + backward on fixed tower
   outputs) and the device's peak bytes in use;
3. with --peer PYTHON (torch + open_clip): open_clip's CLIP + ClipLoss + AdamW at the same
   dimensions and batch (benchmarks/train_step_peer.py, bf16 autocast on a GPU), eager and
   torch.compile, images/s.
Prints one table and writes every figure to OUT/device_step.json.

It imports no TensorFlow, tensorflow-datasets or clu (the device image has none): on CPU,
`MGCA_SMOKE=1 python benchmarks/device_step.py --config=configs/cc3m.py --batches=8,16
--matmul=256 --copy_mb=8` checks the plumbing with those three blocked
(tests/test_benchmark_scripts.py).
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "cc3m.py"))
    ap.add_argument("--batches", default="256,1024", help="global batch sizes, comma-separated")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--matmul", type=int, default=8192, help="n of the bf16 matmul ceiling; 0 = skip")
    ap.add_argument("--copy_mb", type=int, default=2048, help="MB of the copy ceiling; 0 = skip")
    ap.add_argument("--peak_tflops", type=float, default=989.0,
                    help="datasheet dense bf16 TFLOP/s (H100/H200 SXM: 989)")
    ap.add_argument("--peer", default="", help="python with torch + open_clip; '' = no peer")
    ap.add_argument("--peer_modes", default="eager,compile")
    ap.add_argument("--out", default="", help="directory for device_step.json; '' = none")
    args = ap.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        sys.exit(f"error: --batches: comma-separated integers, got {args.batches!r}")
    for name in ("steps", "repeats"):
        if getattr(args, name) <= 0:
            sys.exit(f"error: --{name}: must be positive, got {getattr(args, name)}")
    if min(args.batches) <= 0 or args.matmul < 0 or args.copy_mb < 0 or args.peak_tflops <= 0:
        sys.exit("error: --batches, --matmul, --copy_mb, --peak_tflops: must be positive")
    if not os.path.isfile(args.config):
        sys.exit(f"error: --config: no such file {args.config}")
    if args.peer and not (os.path.exists(args.peer) or shutil.which(args.peer)):
        sys.exit(f"error: --peer: no such interpreter {args.peer}")
    return args


def load_config(path, batch):
    spec = importlib.util.spec_from_file_location("device_step_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.batch_size = batch
    c.total_steps, c.warmup_steps = 1000, 10
    if c.model.vocab_size == -1:
        c.model.vocab_size = c.input.vocab_size       # the tokenizer's size, as the trainer sets it
    c.input.object_words = 20                          # distinct words in the random batch
    return c


def model_flops(config):
    """Forward matmul FLOPs per image of the towers and heads, counted from the config:
    {part: FLOPs}. Multiply-add = 2 FLOPs; attention over every position (a local radius is a
    mask, so it costs the same); training costs 3x the forward (forward, two backward matmuls)."""
    from mgca_jax import losses
    from mgca_jax.models.text import parse_text_variant
    from mgca_jax.models.vit import parse_variant

    def encoder(width, depth, mlp, length):
        per_token = 2 * (4 * width * width + 2 * width * mlp) + 2 * 2 * length * width
        return depth * length * per_token

    v = parse_variant(config.model.image_variant)
    side = config.input.image_size // v["patch"]
    n = side * side
    e = config.model.embed_dim
    out = {"image tower": 2 * n * v["patch"] ** 2 * 3 * v["width"]
           + encoder(v["width"], v["depth"], v["mlp_dim"], n)
           + 2 * n * v["width"] * e}                                   # head on every patch
    t = parse_text_variant(config.model.text_variant)
    length = config.input.max_len
    out["text tower (captions)"] = (encoder(t["width"], t["depth"], t["mlp_dim"], length)
                                    + 2 * (length + 1) * t["width"] * e)   # tokens + pooled
    if losses.needs_objects(config.loss):
        lo, k = config.input.object_max_len, config.input.num_objects
        out["text tower (object prompts)"] = k * (encoder(t["width"], t["depth"], t["mlp_dim"], lo)
                                                  + 2 * t["width"] * e)   # pooled only
    return out


def median_seconds(fn, inputs, repeats):
    import jax
    jax.block_until_ready(fn(inputs[0]))
    times = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ceilings(args):
    import jax
    import jax.numpy as jnp
    out = {}
    keys = jax.random.split(jax.random.key(1), 3)
    if args.matmul:
        n = args.matmul
        pairs = [(jax.random.normal(k, (n, n), jnp.bfloat16), jax.random.normal(k, (n, n), jnp.bfloat16).T)
                 for k in keys]
        s = median_seconds(jax.jit(lambda ab: ab[0] @ ab[1]), pairs, args.repeats)
        out["matmul_bf16_tflops"] = 2 * n ** 3 / s / 1e12
    if args.copy_mb:
        size = args.copy_mb * 2 ** 20 // 4
        xs = [jax.random.normal(k, (size,), jnp.float32) for k in keys]
        s = median_seconds(jax.jit(lambda x: x * 2.0), xs, args.repeats)
        out["copy_gb_s"] = 2 * size * 4 / s / 1e9
    return out


def loss_temp_bytes(step):
    """Temporary bytes of the loss terms alone: forward + backward of `losses.total_loss`
    on the model's outputs for the step's batch (XLA's memory analysis)."""
    import jax
    import jax.numpy as jnp
    from mgca_jax import losses
    model, config, batch = step.model, step.config, step.batch
    with_objects = losses.needs_objects(config.loss)
    with jax.set_mesh(step.mesh):
        out = jax.jit(lambda p, b: model.apply({"params": p}, b, with_objects=with_objects))(
            step.state["params"], batch)
        floats = {k: v for k, v in out.items() if k not in ("grid", "token_mask")}
        grad = jax.jit(jax.grad(lambda o: losses.total_loss(
            dict(o, token_mask=out["token_mask"]), batch, config.loss, step.mesh, step.rng)[0]))
        mem = grad.lower(floats).compile().memory_analysis()
    return None if mem is None else int(mem.temp_size_in_bytes)


def measure_project(args, batch):
    import jax
    from train_step_speed import ProjectStep
    config = load_config(args.config, batch)
    step = ProjectStep(config)
    times = [step.run(args.steps) / args.steps for _ in range(args.repeats)]
    seconds = statistics.median(times)
    cost = step.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = step.compiled.memory_analysis()
    stats = jax.devices()[0].memory_stats() or {}
    flops = model_flops(config)
    return {"batch": batch, "image_size": config.input.image_size,
            "image_variant": config.model.image_variant, "text_variant": config.model.text_variant,
            "dtype": config.model.dtype, "terms": sorted(k for k, w in config.loss.weights.items() if w),
            "params": step.n_params, "compile_s": step.compile_s,
            "step_s": seconds, "step_s_all": times, "images_s": batch / seconds,
            "model_flops_per_image_fwd": flops, "model_flops_step": 3 * batch * sum(flops.values()),
            "xla_flops_step": float(cost.get("flops", 0.0)) if cost else None,
            "step_temp_bytes": None if mem is None else int(mem.temp_size_in_bytes),
            "loss_temp_bytes": loss_temp_bytes(step),
            "peak_bytes_in_use": stats.get("peak_bytes_in_use")}


def measure_peer(args, config, batch, mode):
    import jax
    from mgca_jax.models.text import parse_text_variant
    from mgca_jax.models.vit import parse_variant
    from train_step_speed import Peer
    on_gpu = jax.default_backend() == "gpu"
    dims = types.SimpleNamespace(threads=os.cpu_count(), batch=batch, image_size=config.input.image_size,
                                 image_variant=config.model.image_variant, max_len=config.input.max_len,
                                 vocab=config.model.vocab_size, embed_dim=config.model.embed_dim)
    extra = ["--device", "cuda" if on_gpu else "cpu"] + (["--bf16"] if on_gpu else [])
    towers = (("image", parse_variant(config.model.image_variant)),
              ("text", parse_text_variant(config.model.text_variant)))
    for tower, v in towers:
        extra += [f"--{tower}_width", str(v["width"]), f"--{tower}_layers", str(v["depth"]),
                  f"--{tower}_heads", str(v["num_heads"]), f"--{tower}_mlp", str(v["mlp_dim"])]
    peer = Peer(args.peer, dims, mode, extra)
    try:
        times = [peer.run(args.steps) / args.steps for _ in range(args.repeats)]
    finally:
        peer.close()
    seconds = statistics.median(times)
    return {"batch": batch, "mode": mode, "info": peer.info, "step_s": seconds, "step_s_all": times,
            "images_s": batch / seconds}


def main(argv=None):
    args = parse_args(argv)
    import jax
    dev = jax.devices()[0]
    report = {"jax": jax.__version__, "backend": jax.default_backend(), "device": dev.device_kind,
              "devices": jax.device_count(), "peak_tflops": args.peak_tflops}
    print(f"device: {dev.device_kind} x {jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}",
          flush=True)
    report["ceilings"] = ceilings(args)
    print("ceilings:", ", ".join(f"{k} {v:.1f}" for k, v in report["ceilings"].items()), flush=True)
    report["project"], report["peer"] = [], []
    for batch in args.batches:
        r = measure_project(args, batch)
        r["mfu"] = r["model_flops_step"] / r["step_s"] / (args.peak_tflops * 1e12)
        if "matmul_bf16_tflops" in report["ceilings"]:
            r["mfu_of_measured_matmul"] = (r["model_flops_step"] / r["step_s"]
                                           / (report["ceilings"]["matmul_bf16_tflops"] * 1e12))
        report["project"].append(r)
        print(f"mgca_jax batch {batch}: {r['images_s']:.1f} images/s, MFU {100 * r['mfu']:.1f} %, "
              f"compile {r['compile_s']:.0f} s", flush=True)
        if args.peer:
            config = load_config(args.config, batch)
            for mode in args.peer_modes.split(","):
                p = measure_peer(args, config, batch, mode)
                report["peer"].append(p)
                print(f"open_clip {mode} batch {batch}: {p['images_s']:.1f} images/s", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "device_step.json"), "w") as f:
            json.dump(report, f, indent=1)

    def mb(x):
        return "-" if x is None else f"{x / 2 ** 20:.0f}"
    print(f"\n| system | batch | images/s | MFU % (of {args.peak_tflops:.0f} TFLOP/s) | model / XLA "
          f"TFLOP per step | step temp MiB | loss temp MiB | peak MiB |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for r in report["project"]:
        xla = "-" if not r["xla_flops_step"] else f"{r['xla_flops_step'] / 1e12:.2f}"
        print(f"| mgca_jax ({r['image_variant']}, {r['dtype']}, {len(r['terms'])} terms) | {r['batch']} | "
              f"{r['images_s']:.1f} | {100 * r['mfu']:.1f} | {r['model_flops_step'] / 1e12:.2f} / {xla} | "
              f"{mb(r['step_temp_bytes'])} | {mb(r['loss_temp_bytes'])} | {mb(r['peak_bytes_in_use'])} |")
    for p in report["peer"]:
        print(f"| open_clip {p['mode']} | {p['batch']} | {p['images_s']:.1f} | | | | | |")
    for r in report["project"]:
        for p in report["peer"]:
            if p["batch"] == r["batch"]:
                print(f"batch {r['batch']}: mgca_jax / open_clip {p['mode']} = "
                      f"{r['images_s'] / p['images_s']:.2f}")
    return report


if __name__ == "__main__":
    main()
