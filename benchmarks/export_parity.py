"""Parity of an export with its orbax checkpoint, on the same device.

  python benchmarks/export_parity.py --workdir=DIR [--export=EXPORT_DIR] [--data_dir=TFDS_DIR]

Exports DIR's latest checkpoint (into --export when it is absent or empty, else a
temporary directory; an existing --export is loaded as it is), then prints:
  - max |diff| of encode_image and encode_text, `mgca_jax.load(export)` against the
    orbax params through the flax module (expected 0: bit-identical);
  - the fraction of equal segmentation labels, `Model.segment` against the orbax
    path through `inference.make_segmenter` (expected 1.0);
  - the embedded validation mIoU (adaptive unit, default protocol) of
    `python -m mgca_jax.evaluate --dataset=embedded` with --workdir and with --export
    (expected equal; --skip_miou leaves it out).
Exit status 1 on any mismatch, 2 on bad input. --out writes the figures as JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from mgca_jax.cli_errors import Parser, fail  # noqa: E402

TEXTS = ["a photo of a circle.", "a red square next to a blue star", "", "triangle " * 40]


def run_module(*args, timeout=3600):
    """`python -m ...` in a subprocess; its stderr's last line on failure."""
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        fail(f"{args[0]} {' '.join(args[1:2])} ...: exit {proc.returncode}: {tail}")
    return proc.stdout


def embedded_miou(source_flag, data_dir, limit, out_dir):
    out = os.path.join(out_dir, f"eval_{source_flag.split('=')[0].strip('-')}.json")
    extra = ([f"--data_dir={data_dir}"] if data_dir else []) + ([f"--limit={limit}"] if limit else [])
    run_module("mgca_jax.evaluate", source_flag, "--dataset=embedded", "--unit=adaptive",
               f"--out={out}", *extra)
    with open(out) as f:
        rec = json.load(f)["results"]["embedded"]
    return rec["units"]["adaptive"]["miou"], rec["num_images"], rec["protocol"]


def main(argv=None):
    p = Parser(prog="benchmarks/export_parity.py", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training directory (latest checkpoint)")
    p.add_argument("--export", help="export directory: loaded if it holds an export, else written")
    p.add_argument("--data_dir", help="tfds dir of the embedded data set (default: the run's)")
    p.add_argument("--limit", type=int, help="mIoU over the first N validation images only")
    p.add_argument("--images", type=int, default=8, help="scenes for the encode/segment checks")
    p.add_argument("--skip_miou", action="store_true", help="leave out the validation mIoU")
    p.add_argument("--out", help="JSON path for the figures")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.workdir, "config.json")):
        fail(f"--workdir: {args.workdir} has no config.json (not a training directory)")
    if args.images < 1 or (args.limit is not None and args.limit < 1):
        fail("--images/--limit: expected positive integers")

    import jax
    import jax.numpy as jnp
    import numpy as np

    import mgca_jax
    from mgca_jax import checkpoints, inference
    from mgca_jax.data import scenes
    from mgca_jax.evaluation import protocol

    tmp = tempfile.mkdtemp(prefix="export_parity_")
    export = args.export or os.path.join(tmp, "export")
    if not (os.path.isdir(export) and os.listdir(export)):
        t = time.time()
        print(run_module("mgca_jax.export", f"--workdir={args.workdir}", f"--out={export}").strip()
              + f" ({time.time() - t:.1f} s)", flush=True)
    try:
        loaded = checkpoints.load(args.workdir)
        tok = checkpoints.load_tokenizer(loaded.config)
        model = mgca_jax.load(export)
    except (checkpoints.CheckpointError, mgca_jax.api.ExportError) as e:
        fail(e)
    step = int(model.meta["provenance"]["step"])
    print(f"workdir {args.workdir} step {loaded.step}; export {export} step {step}; "
          f"device {jax.devices()[0].platform} ({jax.devices()[0].device_kind})", flush=True)

    config, m = loaded.config, loaded.model
    size = int(config.input.image_size)
    images = [scenes.make_example(7, i, size)["image"] for i in range(args.images)]
    x = jnp.stack([protocol.normalize(img) for img in images])
    ref_img = jax.jit(lambda p, x: m.apply({"params": p}, x, method=m.encode_image))(loaded.params, x)
    tokens = jnp.asarray([tok.encode(t, config.input.max_len) for t in TEXTS])
    ref_txt = jax.jit(lambda p, t: m.apply({"params": p}, t, method=m.encode_text))(loaded.params, tokens)
    figures = {
        "step_workdir": loaded.step, "step_export": step,
        "encode_image_max_abs_diff": float(jnp.max(jnp.abs(model.encode_image(images)
                                                          - ref_img["image_embed"]))),
        "encode_text_max_abs_diff": float(jnp.max(jnp.abs(model.encode_text(TEXTS)
                                                         - ref_txt["text_embed"]))),
    }
    # Segmentation: larger, non-square images through the model's default protocol.
    classes = list(scenes.CLASS_NAMES)
    big = [np.asarray(jax.image.resize(img, (size * 3 // 2, size * 2, 3), "linear")).astype(np.uint8)
           for img in images]
    short, crop, stride = inference.config_protocol(config)
    seg = inference.make_segmenter(m, loaded.params, tok, classes,
                                   protocol.get_templates(config.eval.templates), config.input.max_len,
                                   protocol_config=inference.ProtocolConfig(short, 2048, crop, stride),
                                   bg_thresh=config.eval.bg_thresh)
    want = seg.predict_fn()(big)
    got = model.segment(big, classes)
    equal = sum(int((g == w).sum()) for g, w in zip(got, want))
    figures["segment_labels_equal_fraction"] = equal / sum(w.size for w in want)
    figures["segment_protocol"] = {"short_side": short, "crop": crop, "stride": stride}
    ok = (figures["step_workdir"] == step and figures["encode_image_max_abs_diff"] == 0.0
          and figures["encode_text_max_abs_diff"] == 0.0
          and figures["segment_labels_equal_fraction"] == 1.0)
    print(f"encode_image max |diff| {figures['encode_image_max_abs_diff']:.3g} ({len(images)} images "
          f"{size}x{size}); encode_text max |diff| {figures['encode_text_max_abs_diff']:.3g} "
          f"({len(TEXTS)} texts); segmentation labels equal {figures['segment_labels_equal_fraction']:.6f} "
          f"({len(big)} images {big[0].shape[0]}x{big[0].shape[1]}, adaptive, protocol "
          f"{short}/{crop}/{stride})", flush=True)
    if not args.skip_miou:
        t = time.time()
        a, n_a, pc = embedded_miou(f"--workdir={args.workdir}", args.data_dir, args.limit, tmp)
        b, n_b, _ = embedded_miou(f"--export={export}", args.data_dir, args.limit, tmp)
        figures.update(miou_workdir=a, miou_export=b, miou_images=n_a, miou_protocol=pc)
        ok = ok and a == b and n_a == n_b
        print(f"embedded validation mIoU (adaptive, protocol {pc['short_side']}/{pc['crop']}/"
              f"{pc['stride']}, {n_a} images): --workdir {100 * a:.4f} %, --export {100 * b:.4f} % "
              f"({time.time() - t:.0f} s)", flush=True)
    figures["parity"] = ok
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)
    print("parity: " + ("all equal" if ok else "MISMATCH"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
