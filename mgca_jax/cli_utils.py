"""Flags and helpers shared by the inference CLIs (`mgca_jax.evaluate`, `mgca_jax.segment`).

Bad input ends with one line on stderr, `error: ...` naming the flag or path,
and exit status 2.
"""
from __future__ import annotations

import argparse
import time

from mgca_jax import inference
from mgca_jax.cli_errors import Parser, fail  # noqa: F401  (the tools import them from here)


def add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="training directory (config.json + checkpoints/); latest step")
    p.add_argument("--checkpoint", help="one step: WORKDIR/checkpoints/STEP")
    p.add_argument("--export", help="an export directory (python -m mgca_jax.export)")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the run's)")
    p.add_argument("--templates", help="prompt template set (default: config.eval.templates)")


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    d, u = inference.ProtocolConfig(), inference.UnitConfig()
    p.add_argument("--bg_thresh", help="background threshold, or 'none' (default: see --help of the tool)")
    p.add_argument("--short_side", type=int, help=f"resize the short side to this (default {d.short_side})")
    p.add_argument("--max_long", type=int, default=d.max_long, help="cap on the resized long side")
    p.add_argument("--crop", type=int, help=f"sliding window size (default {d.crop})")
    p.add_argument("--stride", type=int, help=f"sliding window stride (default {d.stride})")
    p.add_argument("--windows_per_device", type=int, default=4, help="windows per device per call")
    p.add_argument("--num_groups", type=int, default=u.num_groups, help="G segments per window")
    p.add_argument("--agreement_thresh", type=float, default=u.agreement_thresh,
                   help="adaptive: share of a segment's patches that must agree with it")
    p.add_argument("--coherence_thresh", type=float, default=u.coherence_thresh,
                   help="adaptive: mean patch-to-segment cosine for a segment to be labelled whole")
    p.add_argument("--outlier_thresh", type=float, default=u.outlier_thresh,
                   help="adaptive: a disagreeing patch below this cosine keeps its own label")


def unit_config(args) -> inference.UnitConfig:
    try:
        return inference.UnitConfig(num_groups=args.num_groups,
                                    agreement_thresh=args.agreement_thresh,
                                    coherence_thresh=args.coherence_thresh,
                                    outlier_thresh=args.outlier_thresh)
    except ValueError as e:
        fail(f"--{e}")


def protocol_config(args, short_side: int, crop: int, stride: int,
                    check_windows: bool = True) -> inference.ProtocolConfig:
    """Flags override the given defaults (`check_windows`: stride <= crop)."""
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731  (0 is an error)
    cfg = inference.ProtocolConfig(
        short_side=pick(args.short_side, short_side), max_long=args.max_long,
        crop=pick(args.crop, crop), stride=pick(args.stride, stride))
    for name in ("short_side", "max_long", "crop", "stride"):
        if getattr(cfg, name) <= 0:
            fail(f"--{name}: expected a positive integer, got {getattr(cfg, name)}")
    if check_windows and cfg.stride > cfg.crop:          # pixels between windows would get no score
        fail(f"--stride: {cfg.stride} is larger than the window (--crop={cfg.crop})")
    if args.windows_per_device < 1:
        fail(f"--windows_per_device: expected a positive integer, got {args.windows_per_device}")
    return cfg


def parse_bg_thresh(value: str | None, default: float | None) -> float | None:
    if value is None:
        return default
    if value.strip().lower() in ("none", ""):
        return None
    try:
        return float(value)
    except ValueError:
        fail(f"--bg_thresh: expected a number or 'none', got {value!r}")


def fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Prints `[name] done/total images  rate images/s  ETA` at most every `every` seconds."""

    def __init__(self, name: str, total: int | None, every: float = 5.0):
        self.name, self.total, self.every = name, total, every
        self.start = self.last = time.time()
        self.done = 0
        self.printed = None  # the count last printed

    @property
    def rate(self) -> float:
        return self.done / max(time.time() - self.start, 1e-9)

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.time()
        if (not force and now - self.last < self.every) or self.done == self.printed:
            return
        self.last, self.printed = now, self.done
        total = f"/{self.total}" if self.total else ""
        eta = (f"  ETA {fmt_seconds((self.total - self.done) / max(self.rate, 1e-9))}"
               if self.total else "")
        print(f"[{self.name}] {self.done}{total} images  {self.rate:.2f} images/s{eta}", flush=True)
