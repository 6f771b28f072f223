"""Segment your own images with free-form class names.

  python -m mgca_jax.segment --workdir=DIR --image=photo.jpg --classes="cat,dog,grass" --out_dir=out
  python -m mgca_jax.segment --checkpoint=DIR/checkpoints/STEP --image=folder/ --classes=... \\
      --out_dir=out --unit=pixel --bg_thresh=0.3

For every image (a file, or every image file directly inside a folder) it writes
OUT_DIR/<name>_overlay.png (the labels over the image, with a legend of the classes
present) and OUT_DIR/<name>_labels.png (one channel, the label ids at the image's
size), plus OUT_DIR/label_names.json (id -> name). Without --bg_thresh (the
default) every pixel gets one of the classes and class i is id i; with it, id 0 is
background and class i is id i + 1. The protocol is the field's (short side 448,
448/224 sliding windows). Bad input ends with a one-line error, exit status 2.
In a folder, an unreadable image is skipped: the others are written, and a last
line on stderr names each skipped file (exit status 1).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from mgca_jax import checkpoints, cli_utils, inference  # noqa: E402
from mgca_jax.cli_utils import fail  # noqa: E402
from mgca_jax.evaluate import default_protocol  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def build_parser():
    p = cli_utils.Parser(prog="python -m mgca_jax.segment", description=__doc__.split("\n")[0])
    cli_utils.add_checkpoint_flags(p)
    p.add_argument("--image", required=True, help="an image file or a folder of images")
    p.add_argument("--classes", required=True, help='comma-separated class names, e.g. "cat,dog,grass"')
    p.add_argument("--out_dir", required=True)
    p.add_argument("--unit", default="adaptive", choices=inference.UNITS)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    cli_utils.add_inference_flags(p)
    return p


def find_images(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            fail(f"--image: no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
        return files
    fail(f"--image: {p} does not exist")


def output_names(files: list[Path]) -> list[str]:
    """File stems, with the suffix kept where two files share a stem."""
    stems = [f.stem for f in files]
    return [f.stem if stems.count(f.stem) == 1 else f.name.replace(".", "_") for f in files]


def main(argv=None):
    args = build_parser().parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes:
        fail(f"--classes: no class names in {args.classes!r}")
    if len(set(classes)) != len(classes):
        fail(f"--classes: duplicate class names in {args.classes!r}")
    if not 0.0 <= args.alpha <= 1.0:
        fail(f"--alpha: expected a value in [0, 1], got {args.alpha}")
    files = find_images(args.image)
    from PIL import Image
    skipped = {}                           # path -> reason; a lone bad file fails outright
    for path in files:
        try:
            Image.open(path).close()
        except (OSError, ValueError) as e:
            skipped[path] = f"{type(e).__name__}: {e}"
    if len(skipped) == len(files):
        path, reason = next(iter(skipped.items()))
        fail(f"--image: cannot read {path} ({reason})" if len(files) == 1 else
             f"--image: cannot read any of the {len(files)} images in {args.image} (first: {path}, {reason})")
    ucfg = cli_utils.unit_config(args)
    bg = cli_utils.parse_bg_thresh(args.bg_thresh, None)
    cli_utils.protocol_config(args, *default_protocol(), check_windows=False)   # flags alone
    try:
        loaded, tokenizer = checkpoints.load_for_tools(args.workdir, args.checkpoint, args.export,
                                                       args.tokenizer)
    except checkpoints.CheckpointError as e:
        fail(e)
    # Defaults follow the model's protocol: config.eval.test_scale x its training size (the
    # field's 448/448/224 for a model trained at 224 with the default scale 2).
    pcfg = cli_utils.protocol_config(args, *inference.config_protocol(loaded.config))
    from mgca_jax.evaluation import benchmarks, protocol, visualize
    try:
        templates = protocol.get_templates(args.templates or loaded.config.eval.templates)
    except ValueError as e:
        fail(f"--templates: {e}")
    os.makedirs(args.out_dir, exist_ok=True)
    label_names = (["background"] if bg is not None else []) + classes
    with open(os.path.join(args.out_dir, "label_names.json"), "w") as f:
        json.dump(dict(enumerate(label_names)), f, indent=1)

    seg = inference.make_segmenter(loaded.model, loaded.params, tokenizer, classes, templates,
                                   loaded.config.input.max_len, units=(args.unit,), unit_config=ucfg,
                                   protocol_config=pcfg, bg_thresh=bg,
                                   windows_per_device=args.windows_per_device)
    todo = [(f, n) for f, n in zip(files, output_names(files)) if f not in skipped]
    progress = cli_utils.Progress("segment", len(todo))
    for path, reason in skipped.items():
        print(f"skipping {path} ({reason})", file=sys.stderr, flush=True)
    chunk = len(seg.devices) * args.windows_per_device
    for start in range(0, len(todo), chunk):
        readable, images = [], []
        for path, name in todo[start:start + chunk]:
            try:                           # opens but fails to decode (e.g. truncated)
                images.append(benchmarks.load_image(path))
                readable.append((path, name))
            except (OSError, ValueError) as e:
                skipped[path] = f"{type(e).__name__}: {e}"
                print(f"skipping {path} ({skipped[path]})", file=sys.stderr, flush=True)
        for (path, name), image, labels in zip(readable, images, seg.segment(images) if images else []):
            overlay = os.path.join(args.out_dir, f"{name}_overlay.png")
            visualize.save_overlay_and_labels(image, labels[0], label_names, overlay,
                                              os.path.join(args.out_dir, f"{name}_labels.png"),
                                              alpha=args.alpha)
            print(f"{path} -> {overlay}", flush=True)
        progress.update(len(images))
    progress.update(0, force=True)
    if skipped:
        print(f"error: wrote {len(files) - len(skipped)} of {len(files)} images; skipped "
              f"{len(skipped)} unreadable: {', '.join(map(str, skipped))}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
