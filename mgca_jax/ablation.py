"""Ablation of the objective on the embedded world: each variant x each seed.

  python -m mgca_jax.ablation --root=workdirs/ablation --steps=500 --seeds=0,1,2 \
      --results=docs/results.md

Every run is `python -m mgca_jax.main` in its own process (same config, same
step budget; only the loss weights and the seed change): a variant switches
its terms on with the config's weights (1 where the config has 0) and the
others off. Its final
zero-shot mIoU on every split the trainer scored (for the embedded world the
validation split and its atypical-colour partner, where only shape tells the
class) is read from the workdir's eval JSON, and so is the mean IoU over the object
classes alone (background left out: a variant can gain mIoU on the atypical split
through background alone). Finished runs are reused, so an
interrupted ablation resumes. One table per split and per score (mean +- std over seeds) is printed, saved as ROOT/ablation.json and, with --results, written
into that markdown file between `<!-- ablation:begin -->` and `<!-- ablation:end -->`
(`<!-- ablation:NAME:begin -->` ... with --block=NAME, so several ablations can stand in one file).
"""
import argparse
import concurrent.futures
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

# name -> the terms it switches on; the pixel level is the pixel term plus its background contrast.
TERMS = ("image_text", "object", "region", "pixel", "background")
VARIANTS = {
    "image-text only": ("image_text",),
    "+ object": ("image_text", "object"),
    "+ region": ("image_text", "region"),
    "+ pixel": ("image_text", "pixel", "background"),
    "full objective": TERMS,
}
BEGIN, END = "<!-- ablation:begin -->", "<!-- ablation:end -->"


def markers(block=""):
    """The begin/end markers of a named results block ("" = the original, unnamed one)."""
    if not block:
        return BEGIN, END
    return f"<!-- ablation:{block}:begin -->", f"<!-- ablation:{block}:end -->"


def run_dir(root, variant, seed):
    slug = variant.replace("+ ", "plus_").replace(" ", "_").replace("-", "_")
    return os.path.join(root, f"{slug}_seed{seed}")


def variant_weights(config_weights, variant):
    """Loss weights of a variant: its terms at the config's weight (1 where that is 0), others 0."""
    on = VARIANTS[variant]
    return {t: (float(config_weights.get(t, 0.0)) or 1.0) if t in on else 0.0 for t in TERMS}


def config_weights(config_path):
    """The terms a config file switches on (its get_config().loss.weights, zeros left out)."""
    spec = importlib.util.spec_from_file_location("ablation_config", config_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: float(v) for k, v in module.get_config().loss.weights.items() if float(v) != 0.0}


def weight_flags(weights):
    return [f"--config.loss.weights.{k}={v}" for k, v in weights.items()]


OBJECTS = " (object classes)"


def split_scores(record):
    """{split: mIoU in %} of an eval JSON (older JSONs hold only the validation split).

    Where the JSON has per-class IoU with a background class, `SPLIT (object classes)` is
    also given: the mean IoU over the other classes, so that a variant cannot gain on a
    split by its background alone."""
    splits = record.get("splits") or {"validation": {"miou": record["miou"], "iou": record.get("iou")}}
    scores = {}
    for split, r in splits.items():
        scores[split] = 100.0 * r["miou"]
        iou = r.get("iou") or {}
        objects = [v for k, v in iou.items() if k != "background" and v is not None and v == v]
        if "background" in iou and objects:
            scores[split + OBJECTS] = 100.0 * sum(objects) / len(objects)
    return scores


def run_one(args, variant, seed):
    """Trains one run (unless its eval JSON exists) and returns {split: mIoU in %}."""
    workdir = run_dir(args.root, variant, seed)
    result = os.path.join(workdir, f"eval_step{args.steps}.json")
    if not os.path.exists(result):
        cmd = [sys.executable, "-m", "mgca_jax.main", f"--config={args.config}", f"--workdir={workdir}",
               f"--config.seed={seed}", f"--config.total_steps={args.steps}",
               *weight_flags(args.weights[variant]), *args.override]
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "ablation.log"), "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0 or not os.path.exists(result):
            raise RuntimeError(f"run {workdir} failed (exit {rc}); see {workdir}/ablation.log")
    with open(result) as f:
        return split_scores(json.load(f))


def summarise(scores):
    """{variant: [mIoU per seed]} -> rows with mean, std and the gap to image-text only."""
    base = scores.get("image-text only")
    rows = []
    for variant, values in scores.items():
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        row = dict(variant=variant, values=values, mean=mean, std=std)
        if base and variant != "image-text only" and len(values) > 1:
            pooled = max(statistics.stdev(base), std)
            row["gap_in_std"] = (mean - statistics.fmean(base)) / pooled if pooled > 0 else float("inf")
        rows.append(row)
    return rows


def markdown(rows, command, steps, weights, split="validation"):
    lines = [f"Command: `{command}`", "",
             f"Final zero-shot mIoU (%) on the {split.replace(OBJECTS, '')} split"
             f"{', mean over the object classes (background left out)' if split.endswith(OBJECTS) else ''},"
             f" {steps} steps per run.", "",
             "| variant | loss weights | per seed | mean ± std | gap to image-text (in std) |",
             "| --- | --- | --- | ---: | ---: |"]
    for r in rows:
        w = ", ".join(f"{k} {v:g}" for k, v in weights[r["variant"]].items() if v)
        per = " / ".join(f"{v:.2f}" for v in r["values"])
        gap = f"{r['gap_in_std']:+.1f}" if "gap_in_std" in r else ""
        lines.append(f"| {r['variant']} | {w} | {per} | {r['mean']:.2f} ± {r['std']:.2f} | {gap} |")
    lines.append("")
    lines.append("Gap = (mean - mean of image-text only) / the larger of the two standard deviations.")
    return "\n".join(lines)


def write_into(path, text, block=""):
    """Replaces the named block between its markers (appends it if absent); atomic."""
    begin, end = markers(block)
    old = open(path).read() if os.path.exists(path) else ""
    framed = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + framed + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + framed + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.py")
    ap.add_argument("--root", default="workdirs/ablation")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names")
    ap.add_argument("--parallel", type=int, default=2, help="runs at once")
    ap.add_argument("--results", default="", help="markdown file to write the table into")
    ap.add_argument("--block", default="", help="name of the block in --results ('' = the unnamed one)")
    ap.add_argument("--override", action="append", default=[], help="extra --config.x=y for every run")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"error: --variants: unknown {unknown}; known: {list(VARIANTS)}")
    if not all(c.isalnum() or c in "_-" for c in args.block):
        sys.exit(f"error: --block: expected letters, digits, '_' or '-', got {args.block!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"error: --seeds: expected comma-separated integers, got {args.seeds!r}")
    if not os.path.isfile(args.config):
        sys.exit(f"error: --config: file {args.config} does not exist")
    base = config_weights(args.config)
    args.weights = {v: variant_weights(base, v) for v in variants}
    jobs = [(v, s) for v in variants for s in seeds]
    scores = {v: [None] * len(seeds) for v in variants}
    start, done = time.time(), 0
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = {pool.submit(run_one, args, v, s): (v, i) for v in variants for i, s in enumerate(seeds)}
        for fut in concurrent.futures.as_completed(futures):
            v, i = futures[fut]
            scores[v][i] = fut.result()
            done += 1
            elapsed = time.time() - start
            eta = elapsed / done * (len(jobs) - done)
            figures = ", ".join(f"{s} {m:.2f}" for s, m in scores[v][i].items())
            print(f"[{done}/{len(jobs)}] {v} seed {seeds[i]}: mIoU {figures}  "
                  f"elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min", flush=True)
    splits = [s for s in next(iter(scores.values()))[0] if all(s in r for rs in scores.values() for r in rs)]
    rows = {s: summarise({v: [r[s] for r in rs] for v, rs in scores.items()}) for s in splits}
    command = shlex.join(["python", "-m", "mgca_jax.ablation", *(argv or sys.argv[1:])])
    text = "\n\n".join(markdown(rows[s], command, args.steps, args.weights, s) for s in splits)
    print(text)
    with open(os.path.join(args.root, "ablation.json"), "w") as f:
        json.dump(dict(steps=args.steps, seeds=seeds, weights=args.weights, rows=rows), f, indent=1)
    if args.results:
        write_into(args.results, text, args.block)


if __name__ == "__main__":
    main()
