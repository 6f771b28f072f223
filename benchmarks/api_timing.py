"""Cold-start times of the downstream API, in this fresh process.

  python benchmarks/api_timing.py --export=EXPORT_DIR [--size=H] [--repeat=3] [--out=FILE.json]

Prints the seconds of `import mgca_jax` (with jax), `mgca_jax.load(export)`
(checksums, key and shape checks, tokenizer), then the first call (compilation
included) and the median of --repeat later calls of encode_text, encode_image and
segment (adaptive unit, the export's default protocol) on a uint8 image of
--size x 4/3 --size, and which TensorFlow packages got imported (none expected). Bad input: exit 2.
"""
import argparse
import os
import sys
import time

T0 = time.perf_counter()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/api_timing.py", description=__doc__.split("\n")[0])
    p.add_argument("--export", required=True)
    p.add_argument("--size", type=int, default=0, help="image height (default: 2x the training size)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args(argv)
    if not os.path.isdir(args.export):
        print(f"error: --export: {args.export} is not a directory", file=sys.stderr)
        return 2
    if args.repeat < 1:
        print(f"error: --repeat: expected a positive integer, got {args.repeat}", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    figures = {}
    t = time.perf_counter()
    import jax

    import mgca_jax
    figures["import_s"] = time.perf_counter() - t
    try:
        model, figures["load_s"] = timed(lambda: mgca_jax.load(args.export))
    except mgca_jax.api.ExportError as e:
        print(f"error: --export: {e}", file=sys.stderr)
        return 2
    import numpy as np
    size = args.size or 2 * model.image_size
    image = np.random.default_rng(0).integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)
    classes = ["circle", "square", "triangle"]
    calls = {"encode_text": lambda: model.encode_text(["a photo of a circle.", "a red square"]),
             "encode_image": lambda: model.encode_image([image]),
             "segment": lambda: model.segment([image], classes)}
    for name, fn in calls.items():
        _, figures[f"{name}_first_s"] = timed(lambda: jax.block_until_ready(fn()))
        later = [timed(lambda: jax.block_until_ready(fn()))[1] for _ in range(args.repeat)]
        figures[f"{name}_later_s"] = float(np.median(later))
    figures["process_s"] = time.perf_counter() - T0
    figures["tensorflow_imported"] = sorted({k.split(".")[0] for k in sys.modules} & {
        "tensorflow", "tensorflow_text", "tensorflow_datasets"})
    print(f"export {args.export}; {jax.devices()[0].platform} x{jax.device_count()}; image "
          f"{image.shape[0]}x{image.shape[1]}")
    for k, v in figures.items():
        print(f"  {k:24s} {v:.3f}" if isinstance(v, float) else f"  {k:24s} {v}")
    if args.out:
        import json
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
