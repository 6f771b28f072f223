"""Zero-shot segmentation mIoU of a trained checkpoint, per prediction unit.

  python -m mgca_jax.evaluate --workdir=DIR --dataset=voc21 --data_dir=/data --unit=adaptive
  python -m mgca_jax.evaluate --checkpoint=DIR/checkpoints/STEP --dataset=all --data_dir=/data --unit=all
  python -m mgca_jax.evaluate --workdir=DIR --dataset=embedded --unit=all
  python -m mgca_jax.evaluate --workdir=DIR --dataset=embedded_atypical --unit=all

--dataset: a benchmark of evaluation/benchmarks.py (voc21, voc20, context60, context59,
coco_object, coco_stuff, cityscapes, ade20k) read from --data_dir in its official
layout; `all` (every benchmark found under --data_dir); or a split of the run's
generated scenes: `embedded` (the run's config.data.eval_split: validation unless the
run was trained with another), `embedded_validation` (validation, whatever the run's
eval_split), `embedded_atypical` (validation_atypical: the same kind of scenes with every object
in a contrasting colour that is not its class's typical one, so only shape tells
the class), `embedded_tune` and `embedded_tune_atypical` (the tune splits, for
choosing settings without either validation split). The embedded world is
scored as the field scores a model trained at 224 px (short side 448, 448/224
windows): short side and window twice the training size, stride the training
size, so one window per image
(--short_side, --crop and --stride override; the trainer's end-of-run evaluation is
this command's --unit=adaptive with these defaults, through the same predict function). --unit=all scores pixel, group and adaptive from one
forward pass per window. Benchmarks use the field protocol (short side 448,
448/224 sliding windows, no post-processing); --bg_thresh defaults to
config.eval.bg_thresh on data sets with a background class, else none.

Prints progress (images/s, ETA), a per-class IoU table per unit and writes JSON
(--out, default WORKDIR/inference_<dataset>_step<STEP>.json). With --unit=all it also
gives a 95% interval for adaptive minus each other unit's mIoU, from --bootstrap
(default 1000) paired resamples of the images. With --unit=all,
--png=PATH also draws image | ground truth | pixel | group | adaptive for the
images where the adaptive unit gains most over the better of the other two
(pixel accuracy) and for those where it loses most (PATH gets the data set key
inserted when several data sets are evaluated). Bad input ends
with a one-line error naming the flag or path, exit status 2.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import dataclasses  # noqa: E402
import heapq  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import numpy as np  # noqa: E402

from mgca_jax import checkpoints, cli_utils, inference  # noqa: E402
from mgca_jax.cli_utils import fail  # noqa: E402
from mgca_jax.evaluation import benchmarks, failure_modes, metrics  # noqa: E402


@dataclasses.dataclass
class Job:
    key: str
    title: str
    class_names: tuple
    has_background: bool
    total: int
    samples: Callable[[], Iterator]     # -> (name, uint8 image, uint8 label)
    train_size: int | None = None       # embedded: the training image size (else a benchmark)

    @property
    def label_names(self) -> tuple:
        return (("background",) if self.has_background else ()) + tuple(self.class_names)


# --dataset keys of the embedded world -> split (None = config.data.eval_split).
EMBEDDED_DATASETS = {"embedded": None, "embedded_validation": "validation",
                     "embedded_atypical": "validation_atypical",
                     "embedded_tune": "tune", "embedded_tune_atypical": "tune_atypical"}
default_protocol = inference.default_protocol     # (short side, crop, stride) per training size


def embedded_split(config, key: str = "embedded") -> str:
    """The split a --dataset key of the embedded world scores."""
    return EMBEDDED_DATASETS[key] or config.data.eval_split


def build_parser():
    p = cli_utils.Parser(prog="python -m mgca_jax.evaluate", description=__doc__.split("\n")[0])
    cli_utils.add_checkpoint_flags(p)
    p.add_argument("--dataset", required=True,
                   help=f"benchmark key, 'all' or one of {', '.join(EMBEDDED_DATASETS)}")
    p.add_argument("--data_dir", help="benchmark root (or, for embedded, the tfds data dir)")
    p.add_argument("--unit", default="adaptive", choices=inference.UNITS + ("all",))
    p.add_argument("--out", help="JSON results path")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of each data set")
    p.add_argument("--png", help="with --unit=all: PNG comparing the units on the images where they differ most")
    p.add_argument("--png_rows", type=int, default=8, help="rows of --png (half gains, half losses)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="with --unit=all: paired image resamples for a 95%% interval of adaptive "
                        "minus each other unit's mIoU (0 = off)")
    cli_utils.add_inference_flags(p)
    return p


def benchmark_job(key: str, data_dir: str, limit: int | None) -> Job:
    spec = benchmarks.get_benchmark(key)
    n = len(benchmarks.list_samples(key, data_dir))     # raises BenchmarkLayoutError
    return Job(key, spec.title, spec.class_names, spec.has_background,
               n if limit is None else min(n, limit),
               lambda: benchmarks.iterate(key, data_dir, limit))


def embedded_data_dir(config, data_dir: str | None, key: str = "embedded") -> str:
    if config.data.name != checkpoints.EMBEDDED:
        fail(f"--dataset={key}: the run was trained on {config.data.name!r}, which has no "
             "embedded validation split; pick a benchmark")
    data_dir = data_dir or config.data_dir
    if not data_dir or not os.path.isdir(data_dir):
        fail(f"--data_dir: directory {data_dir} does not exist (the embedded data set's tfds dir)")
    return data_dir


def embedded_job(config, data_dir: str, limit: int | None, key: str = "embedded") -> Job:
    from mgca_jax.quiet import import_tensorflow
    tf = import_tensorflow()
    tf.config.set_visible_devices([], "GPU")
    from mgca_jax.data import scenes, scenes_builder
    builder = scenes_builder.build(data_dir, config.data.config_name)
    split = embedded_split(config, key)
    if split not in builder.info.splits:
        fail(f"--dataset={key}: data set {builder.data_dir} has no split {split!r}")
    n = builder.info.splits[split].num_examples
    n = n if limit is None else min(n, limit)

    def samples():
        ds = builder.as_dataset(split=split, shuffle_files=False).take(n)
        for ex in ds.as_numpy_iterator():
            yield str(int(ex["id"])), ex["image"], ex["mask"][..., 0]

    names = (tuple(s.strip() for s in config.eval.class_names.split(","))
             if config.eval.class_names else tuple(scenes.CLASS_NAMES))
    return Job(key, f"{builder.name}/{config.data.config_name} {split}", names, True, n,
               samples, train_size=int(config.input.image_size))


class UnitExamples:
    """Rows for the unit-comparison PNG, kept while streaming: the `rows // 2` images
    where the adaptive unit's pixel accuracy beats the better of pixel and group by
    the most (ties included, earliest first), and the `rows - rows // 2` where it
    trails by the most."""

    def __init__(self, units, rows: int):
        self.units, self.n_gain, self.n_loss = tuple(units), rows // 2, rows - rows // 2
        self.gains, self.losses, self.count = [], [], 0

    def margin(self, gt, preds) -> float:
        from mgca_jax.evaluation.visualize import IGNORE_INDEX
        valid = gt != IGNORE_INDEX
        if not valid.any():
            return 0.0
        acc = {u: float((p[valid] == gt[valid]).mean()) for u, p in zip(self.units, preds)}
        return acc["adaptive"] - max(acc["pixel"], acc["group"])

    def add(self, image, gt, preds) -> None:
        m, item = self.margin(gt, preds), (image, gt, preds)
        self.count += 1
        heap, key, size = (self.gains, m, self.n_gain) if m >= 0 else (self.losses, -m, self.n_loss)
        if size:
            entry = (key, -self.count, item)         # ties: the earlier image wins
            (heapq.heappush if len(heap) < size else heapq.heappushpop)(heap, entry)

    def rows(self):
        """(margin, image, gt, preds) from the largest gain to the largest loss."""
        gains = sorted(((k, item) for k, _, item in self.gains), key=lambda e: -e[0])
        losses = sorted(((-k, item) for k, _, item in self.losses), key=lambda e: -e[0])
        return [(m, *item) for m, item in gains + losses]

    def save(self, path, label_names) -> int:
        rows = self.rows()
        if rows:
            from mgca_jax.evaluation import visualize
            visualize.save_grid(path, [r[1] for r in rows], [r[2] for r in rows],
                                [np.stack(r[3]) for r in rows], label_names,
                                titles=("image", "ground truth") + self.units, legend="present")
        return len(rows)


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


def png_path(png: str, key: str, several: bool) -> str:
    root, ext = os.path.splitext(png)
    return f"{root}_{key}{ext or '.png'}" if several else png


def evaluate_job(job, loaded, tokenizer, templates, units, args, ucfg, png=None):
    """Runs every unit of `units` over the job's images; returns its JSON record."""
    config = loaded.config
    # embedded: the model's own protocol (config.eval.test_scale x its training size)
    scale = inference.config_test_scale(config)
    defaults = default_protocol(job.train_size, scale) if job.train_size else default_protocol()
    pcfg = cli_utils.protocol_config(args, *defaults)
    bg = cli_utils.parse_bg_thresh(args.bg_thresh, config.eval.bg_thresh if job.has_background else None)
    seg = inference.make_segmenter(loaded.model, loaded.params, tokenizer, job.class_names, templates,
                                   config.input.max_len, units=units, unit_config=ucfg,
                                   protocol_config=pcfg, bg_thresh=bg,
                                   windows_per_device=args.windows_per_device)
    accs = {u: metrics.ConfusionAccumulator(len(job.label_names)) for u in units}
    failures = {u: failure_modes.FailureModes() for u in units} if job.has_background else None
    per_image = {u: [] for u in units} if args.bootstrap and "adaptive" in units and len(units) > 1 else None
    print(f"== {job.key}: {job.title}, {job.total} images, units {', '.join(units)}, "
          f"bg_thresh {bg}, {len(seg.devices)} devices", flush=True)
    progress = cli_utils.Progress(job.key, job.total)
    chunk = len(seg.devices) * args.windows_per_device
    batch = []
    examples = UnitExamples(units, args.png_rows) if png else None

    # Without a threshold the segmenter labels class c as c; where label 0 is background,
    # class c is label c + 1 (every pixel then takes an object class).
    shift = 1 if job.has_background and bg is None else 0

    def flush():
        preds = seg.segment([img for img, _ in batch])
        for pred, (image, gt) in zip(preds, batch):
            pred = [p + shift for p in pred]
            for k, u in enumerate(units):
                conf = accs[u].update(pred[k], gt)
                if per_image is not None:
                    per_image[u].append(metrics.iou_terms(conf))
                if failures is not None:
                    failures[u].update(pred[k], gt)
            if examples is not None:
                examples.add(image, gt, list(pred))
        progress.update(len(batch))
        batch.clear()

    for _, image, label in job.samples():
        batch.append((image, label))
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    progress.update(0, force=True)
    seconds = time.time() - progress.start
    written = examples.save(png, job.label_names) if examples is not None else 0
    if written:
        print(f"wrote {png}: {written} rows "
              "(adaptive's largest gains, then largest losses, in pixel accuracy)", flush=True)
    record = {"dataset": job.key, "title": job.title, "num_images": progress.done,
              "seconds": seconds, "images_per_sec": progress.rate, "bg_thresh": bg,
              "protocol": dataclasses.asdict(pcfg), "label_names": list(job.label_names), "units": {}}
    for u in units:
        res = accs[u].compute()
        print(f"-- {job.key}, {u} unit\n"
              + metrics.format_table(job.label_names, res["iou"], res["miou"], res["acc"]), flush=True)
        record["units"][u] = {"miou": _finite(res["miou"]), "acc": _finite(res["acc"]),
                              "iou": {n: _finite(v) for n, v in zip(job.label_names, res["iou"])},
                              "class_acc": {n: _finite(v) for n, v in zip(job.label_names, res["class_acc"])}}
        objects = res["class_acc"][1:] if job.has_background else res["class_acc"]
        if not np.isnan(objects).all():
            macc = float(np.nanmean(objects))
            record["units"][u]["macc_objects"] = macc
            print(f"mAcc over the object classes: {100 * macc:.2f} (each class's pixels labelled "
                  "with it; with --bg_thresh=none, what is recognised apart from the background rule)",
                  flush=True)
    if failures is not None and progress.done:
        record["failure_modes"] = {u: f.summary() for u, f in failures.items()}
        print(f"-- {job.key}: failure modes\n" + failure_modes.format_table(record["failure_modes"]),
              flush=True)
    if per_image is not None and progress.done:
        record["paired_bootstrap"] = {}
        for u in units:
            if u != "adaptive":
                b = metrics.paired_bootstrap(np.stack(per_image["adaptive"]), np.stack(per_image[u]),
                                             args.bootstrap)
                record["paired_bootstrap"][f"adaptive-{u}"] = b
                print(f"-- {job.key}: adaptive - {u} = {100 * b['diff']:+.2f} mIoU, 95% interval "
                      f"[{100 * b['low']:+.2f}, {100 * b['high']:+.2f}], above zero in "
                      f"{100 * b['p_above_zero']:.1f}% of {b['samples']} paired image resamples",
                      flush=True)
    return record


def summary(records, units) -> str:
    width = max([len("dataset")] + [len(k) for k in records])
    lines = [f"mIoU (%)  {'dataset'.ljust(width)}  " + "  ".join(f"{u:>8}" for u in units)]
    for key, rec in records.items():
        cells = [rec["units"][u]["miou"] for u in units]
        lines.append(f"          {key.ljust(width)}  "
                     + "  ".join(f"{'n/a' if c is None else f'{100 * c:.2f}':>8}" for c in cells))
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    units = inference.UNITS if args.unit == "all" else (args.unit,)
    if args.limit is not None and args.limit < 1:
        fail(f"--limit: expected a positive integer, got {args.limit}")
    if args.png and args.unit != "all":
        fail(f"--png: compares the units, so it needs --unit=all (got --unit={args.unit})")
    if args.png_rows < 1:
        fail(f"--png_rows: expected a positive integer, got {args.png_rows}")
    if args.bootstrap < 0:
        fail(f"--bootstrap: expected a non-negative integer, got {args.bootstrap}")
    ucfg = cli_utils.unit_config(args)
    cli_utils.parse_bg_thresh(args.bg_thresh, None)              # validate flags before loading
    # (stride <= crop is checked per data set: the embedded world has its own defaults)
    cli_utils.protocol_config(args, *default_protocol(), check_windows=False)
    if args.export and not args.out:
        fail("--out: required with --export (the export directory is never written to)")
    try:
        if args.export and not (args.workdir or args.checkpoint):
            config_path, config = None, checkpoints.export_config(args.export)
        else:
            config_path, _, _ = checkpoints.resolve(args.workdir, args.checkpoint)
            config = checkpoints.load_config(config_path)
    except checkpoints.CheckpointError as e:
        fail(e)
    from mgca_jax.evaluation import protocol
    try:
        templates = protocol.get_templates(args.templates or config.eval.templates)
    except ValueError as e:
        fail(f"--templates: {e}")

    # Check every data path before anything expensive.
    jobs, embedded_dir = [], None
    if args.dataset in EMBEDDED_DATASETS:
        embedded_dir = embedded_data_dir(config, args.data_dir, args.dataset)
    else:
        keys = benchmarks.list_benchmarks() if args.dataset == "all" else [args.dataset]
        if args.dataset != "all" and args.dataset not in benchmarks.BENCHMARKS:
            fail(f"--dataset: unknown data set {args.dataset!r}; choose from "
                 f"{benchmarks.list_benchmarks() + ['all', *EMBEDDED_DATASETS]}")
        if not args.data_dir:
            fail("--data_dir is required for benchmark data sets")
        for key in keys:
            try:
                jobs.append(benchmark_job(key, args.data_dir, args.limit))
            except benchmarks.BenchmarkLayoutError as e:
                if args.dataset != "all":
                    fail(e)
                print(f"skipping {e}", flush=True)
        if not jobs:
            fail(f"--data_dir: no benchmark found under {args.data_dir}")
    try:
        loaded, tokenizer = checkpoints.load_for_tools(args.workdir, args.checkpoint, args.export,
                                                       args.tokenizer)
    except checkpoints.CheckpointError as e:
        fail(e)
    if embedded_dir:
        jobs.append(embedded_job(loaded.config, embedded_dir, args.limit, args.dataset))
    print(f"checkpoint {loaded.path} (step {loaded.step}): {loaded.config.model.image_variant} / "
          f"{loaded.config.model.text_variant}", flush=True)

    records = {}
    for job in jobs:
        png = png_path(args.png, job.key, len(jobs) > 1) if args.png else None
        records[job.key] = evaluate_job(job, loaded, tokenizer, templates, units, args, ucfg, png)
    if len(records) > 1 or len(units) > 1:
        print(summary(records, units), flush=True)

    out = args.out or os.path.join(os.path.dirname(config_path),  # (--export requires --out)
                                   f"inference_{args.dataset}_step{loaded.step}.json")
    result = {"checkpoint": loaded.path, "step": loaded.step, "templates": args.templates
              or loaded.config.eval.templates, "unit_config": dataclasses.asdict(ucfg),
              "results": records}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
