"""Inference speed of the three prediction units (images/s), ViT-S/16 on 448x448 images.

The model is randomly initialised (speed does not depend on the weights) at
`--train_size` (its position embedding is resized to the patch grid of a
`--size` window, as for a real checkpoint), the class embeddings are random (the text
tower plays no part in per-image cost). Each image is one 448 window of the
field protocol (`Segmenter.segment`: normalise, window scores sharded with
pmap, upsample, stitch, background rule), so the timings include everything
`python -m mgca_jax.evaluate` does per image except reading files.

For each unit: one warm-up call (compilation), then `--repeats` timed runs of
`--images` images; the best run is reported. "head only" times the unit
function alone on random patch features [batch, N, E] (N = 784 for S/16 at 448) (jit + vmap), i.e. the
unit's own cost on top of the shared ViT forward pass.

Usage:  .venv/bin/python benchmarks/inference_speed.py [--images 8] [--classes 21]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mgca_jax import inference  # noqa: E402
from mgca_jax.models.two_tower import TwoTower, random_params  # noqa: E402


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="S/16")
    ap.add_argument("--size", type=int, default=448)
    ap.add_argument("--train_size", type=int, default=224)
    ap.add_argument("--embed_dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--images", type=int, default=8, help="images per timed run")
    ap.add_argument("--windows_per_device", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--units", default=",".join(inference.UNITS),
                    help="comma-separated units to time (all three also together)")
    args = ap.parse_args()
    units_list = tuple(u for u in args.units.split(",") if u)
    if not units_list or set(units_list) - set(inference.UNITS):
        sys.exit(f"error: --units: expected a comma-separated subset of {list(inference.UNITS)}, "
                 f"got {args.units!r}")

    model = TwoTower(image_variant=args.variant, text_variant="mu", vocab_size=64, max_len=8,
                     embed_dim=args.embed_dim)
    params = random_params(model, args.train_size)
    rng = np.random.default_rng(0)
    class_emb = inference.l2_normalize(jnp.asarray(rng.normal(size=(args.classes, args.embed_dim)),
                                                   jnp.float32))
    images = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    pcfg = inference.ProtocolConfig(short_side=args.size, crop=args.size, stride=args.size // 2)
    ucfg = inference.UnitConfig()
    devices = jax.local_devices()
    grid = inference.patch_grid(model, (args.size, args.size))
    n = grid[0] * grid[1]
    print(f"{args.variant} at {args.size}x{args.size} ({grid[0]}x{grid[1]} = {n} patches), E={args.embed_dim}, "
          f"C={args.classes}, {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPUs; G={ucfg.num_groups}; "
          f"best of {args.repeats} runs of {args.images} images")

    feats = jnp.asarray(rng.normal(size=(args.windows_per_device, n, args.embed_dim)), jnp.float32)
    rows = {}
    settings = [(u,) for u in units_list] + ([inference.UNITS] if len(units_list) == 3 else [])
    for units in settings:
        seg = inference.Segmenter(model, params, class_emb, units=units, unit_config=ucfg,
                                  protocol_config=pcfg, windows_per_device=args.windows_per_device)
        seg.segment(images[:args.windows_per_device * len(devices)])      # compile
        t = best_time(lambda seg=seg: seg.segment(images), args.repeats)
        head = None
        if len(units) == 1:
            fn = jax.jit(jax.vmap(lambda p, u=units[0]: inference.unit_scores(u, p, class_emb, ucfg)))
            jax.block_until_ready(fn(feats))
            head = best_time(lambda fn=fn: jax.block_until_ready(fn(feats)), args.repeats) / feats.shape[0]
        rows["+".join(units) if len(units) > 1 else units[0]] = (t / args.images, head)

    print(f"{'unit':<22} {'images/s':>9} {'ms/image':>9} {'head only ms/image':>19}")
    for name, (per_image, head) in rows.items():
        head_s = "" if head is None else f"{1000 * head:.2f}"
        print(f"{name:<22} {1 / per_image:>9.3f} {1000 * per_image:>9.1f} {head_s:>19}")
    if "adaptive" in rows and "pixel" in rows:
        ratio = rows["adaptive"][0] / rows["pixel"][0]
        print(f"adaptive / pixel time per image: {ratio:.3f} (target <= 1.5)")


if __name__ == "__main__":
    main()
