"""Plots atypical-split mIoU against steps from shape_probe.py logs into one PNG.

  python benchmarks/plot_probe_curves.py --out docs/img/shape_probe.png \
      "patch stem, dense=logs/dense_patch.log" "hmlp stem, dense=logs/dense_hmlp.log"

Each argument is "label=path" to a log written by benchmarks/shape_probe.py, or to a
trainer's workdir, whose `eval_step*.json` give the curve of `--split` (default
tune_atypical); the dashed line is the all-background score printed at the top of the logs.
"""
import argparse
import glob
import json
import os
import re
import sys

STEP = re.compile(r"^step (\d+)/\d+ .*?atypical mIoU ([\d.]+)")
REF = re.compile(r"^atypical: all-background mIoU ([\d.]+)")


def read_workdir_curve(workdir, split):
    """(steps, mIoU % of `split`, None) from a trainer workdir's periodic evaluations."""
    points = []
    for name in glob.glob(os.path.join(workdir, "eval_step*.json")):
        with open(name) as f:
            record = json.load(f)
        if split not in record.get("splits", {}):
            raise ValueError(f"{name}: no split {split!r} (it has {sorted(record.get('splits', {}))})")
        points.append((int(record["step"]), 100.0 * float(record["splits"][split]["miou"])))
    if not points:
        raise ValueError(f"{workdir}: no eval_step*.json (not a trainer workdir with periodic evaluation?)")
    points.sort()
    return [p[0] for p in points], [p[1] for p in points], None


def read_curve(path, split="tune_atypical"):
    """(steps, atypical mIoU, all-background) from one shape_probe log or trainer workdir."""
    if os.path.isdir(path):
        return read_workdir_curve(path, split)
    steps, scores, background = [], [], None
    with open(path) as f:
        for line in f:
            if m := STEP.match(line):
                steps.append(int(m.group(1)))
                scores.append(float(m.group(2)))
            elif m := REF.match(line):
                background = float(m.group(1))
    if not steps:
        raise ValueError(f"{path}: no 'step N/M ... atypical mIoU X' line (not a shape_probe.py log?)")
    return steps, scores, background


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="tune_atypical", help="the split read from trainer workdirs")
    ap.add_argument("--title", default="Shape probe: the demo's image tower, no captions")
    ap.add_argument("curves", nargs="+", help='"label=path": a shape_probe.py log or a trainer workdir')
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    refs, workdirs = [], False
    for spec in args.curves:
        label, sep, path = spec.rpartition("=")
        if not sep or not label:
            sys.exit(f"plot_probe_curves: {spec!r}: expected 'label=path'")
        try:
            steps, scores, background = read_curve(path, args.split)
        except (OSError, ValueError) as e:
            sys.exit(f"plot_probe_curves: {e}")
        ax.plot(steps, scores, marker="o", label=label)
        refs.append(background)
        workdirs |= os.path.isdir(path)
    background = next((b for b in refs if b is not None), None)
    if background is not None:
        ax.axhline(background, color="grey", ls="--", lw=1, label="all background")
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylabel(f"mIoU on {args.split} (%)" if workdirs else "mIoU on atypical-colour scenes (%)")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
