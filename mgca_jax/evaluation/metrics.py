"""Segmentation metrics computed the mmsegmentation way (numpy only).

Protocol (mmsegmentation 0.x's, as GroupViT and TCL use it):

* pixels whose ground truth equals ``ignore_index`` (255) are dropped, both
  from the ground-truth and from the prediction side;
* per class, intersection and union are summed over the *whole dataset*
  (not averaged per image);
* IoU_c = intersection_c / union_c, NaN where union_c == 0 (the class is
  neither present in the ground truth nor predicted anywhere);
* mIoU = mean of the non-NaN IoUs (``np.nanmean``).

Everything is derived from one int64 confusion matrix (rows = ground truth,
columns = prediction), so accumulation over batches is exact.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["confusion_matrix", "ConfusionAccumulator", "scores_from_confusion", "format_table",
           "iou_terms", "paired_bootstrap"]


def _bad_values(values: np.ndarray, num_classes: int) -> np.ndarray:
    bad = (values < 0) | (values >= num_classes)
    return np.unique(values[bad])


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int | None = 255) -> np.ndarray:
    """Return the (C, C) int64 confusion matrix; rows are ground truth, columns prediction.

    ``pred`` and ``gt`` are integer arrays of the same shape (any number of
    dimensions, e.g. HxW or NxHxW). Pixels with ``gt == ignore_index`` are
    skipped. A prediction outside ``[0, num_classes)`` raises ``ValueError``
    (it would otherwise be silently dropped); so does a ground-truth value
    outside ``[0, num_classes)`` that is not ``ignore_index``.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt shapes differ: {pred.shape} vs {gt.shape}")
    for name, arr in (("pred", pred), ("gt", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    pred = pred.astype(np.int64, copy=False).ravel()
    gt = gt.astype(np.int64, copy=False).ravel()
    if ignore_index is not None:
        keep = gt != ignore_index
        pred = pred[keep]
        gt = gt[keep]
    bad = _bad_values(pred, num_classes)
    if bad.size:
        raise ValueError(
            f"prediction value {int(bad[0])} is outside [0, {num_classes}) "
            f"(all bad values: {bad[:10].tolist()})"
        )
    bad = _bad_values(gt, num_classes)
    if bad.size:
        raise ValueError(
            f"ground-truth value {int(bad[0])} is outside [0, {num_classes}) and is not the "
            f"ignore index {ignore_index} (all bad values: {bad[:10].tolist()})"
        )
    flat = gt * num_classes + pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def scores_from_confusion(conf: np.ndarray) -> dict:
    """IoU / mIoU / pixel accuracy from a confusion matrix (rows gt, cols pred)."""
    conf = np.asarray(conf, dtype=np.int64)
    intersection = np.diag(conf).astype(np.int64)
    area_gt = conf.sum(axis=1)
    area_pred = conf.sum(axis=0)
    union = area_gt + area_pred - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / np.maximum(union, 1), np.nan).astype(np.float64)
        class_acc = np.where(area_gt > 0, intersection / np.maximum(area_gt, 1), np.nan).astype(np.float64)
    valid = ~np.isnan(iou)
    miou = float(iou[valid].mean()) if valid.any() else math.nan
    total = int(conf.sum())
    acc = float(intersection.sum() / total) if total > 0 else math.nan
    return dict(
        iou=iou,
        miou=miou,
        acc=acc,
        class_acc=class_acc,
        intersection=intersection,
        union=union,
        area_gt=area_gt,
        area_pred=area_pred,
        num_pixels=total,
    )


class ConfusionAccumulator:
    """Accumulates a confusion matrix over a dataset; ``compute()`` gives mmseg-style scores.

    >>> acc = ConfusionAccumulator(21)
    >>> for pred, gt in batches:          # any matching shapes, batched or not
    ...     acc.update(pred, gt)
    >>> res = acc.compute()               # res["miou"], res["iou"], res["acc"], ...
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.num_updates = 0

    def reset(self) -> None:
        self.confusion[...] = 0
        self.num_updates = 0

    def update(self, pred, gt) -> np.ndarray:
        """Adds one batch; returns that batch's own confusion matrix."""
        conf = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.confusion += conf
        self.num_updates += 1
        return conf

    def merge(self, other: "ConfusionAccumulator") -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes}-class into {self.num_classes}-class accumulator")
        self.confusion += other.confusion
        self.num_updates += other.num_updates

    def compute(self) -> dict:
        """Return dict(iou (C,) float64 with NaN for empty classes, miou, acc,
        intersection, union, class_acc, area_gt, area_pred, num_pixels, confusion)."""
        out = scores_from_confusion(self.confusion)
        out["confusion"] = self.confusion.copy()
        return out


def iou_terms(conf) -> np.ndarray:
    """[2, C] (intersection, union) of one confusion matrix; they add up over images."""
    res = scores_from_confusion(conf)
    return np.stack([res["intersection"], res["union"]])


def paired_bootstrap(terms_a, terms_b, samples: int = 1000, seed: int = 0) -> dict:
    """Uncertainty of mIoU(a) - mIoU(b) for two predictors scored on the same images.

    terms_a, terms_b: per-image `iou_terms`, [N, 2, C]. Each of `samples`
    resamples draws N image indices with replacement (numpy default_rng(seed))
    and computes both dataset-level mIoUs on that same draw. Returns diff (on
    all images), low/high (2.5th/97.5th percentile of the resampled diffs) and
    p_above_zero (share of resamples with diff > 0).
    """
    a, b = np.asarray(terms_a, np.float64), np.asarray(terms_b, np.float64)
    if a.shape != b.shape or a.ndim != 3 or a.shape[0] == 0 or a.shape[1] != 2:
        raise ValueError(f"expected two [N, 2, C] stacks of iou_terms of the same shape, N > 0; "
                         f"got {a.shape} and {b.shape}")
    n = a.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(samples)])

    def miou(terms, w):                      # w [S, N] -> [S]
        inter, union = w @ terms[:, 0], w @ terms[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.nanmean(np.where(union > 0, inter / np.maximum(union, 1), np.nan), axis=-1)

    diffs = miou(a, weights) - miou(b, weights)
    ones = np.ones((1, n))
    diff = float((miou(a, ones) - miou(b, ones))[0])
    return {"diff": diff, "low": float(np.percentile(diffs, 2.5)),
            "high": float(np.percentile(diffs, 97.5)), "p_above_zero": float(np.mean(diffs > 0)),
            "samples": int(samples), "seed": int(seed)}


def format_table(class_names: Sequence[str], iou, miou: float, acc: float | None = None) -> str:
    """A plain-text per-class table (IoU in %), followed by the mIoU line.

    Classes with NaN IoU (never present nor predicted) are shown as ``n/a``
    and are not part of the mean.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if len(class_names) != iou.shape[0]:
        raise ValueError(f"{len(class_names)} class names for {iou.shape[0]} IoU values")
    width = max([len("class")] + [len(str(n)) for n in class_names])
    sep = "+-" + "-" * width + "-+---------+"
    lines = [sep, f"| {'class'.ljust(width)} | IoU (%) |", sep]
    for name, v in zip(class_names, iou):
        cell = "n/a" if np.isnan(v) else f"{100.0 * v:.2f}"
        lines.append(f"| {str(name).ljust(width)} | {cell:>7} |")
    lines.append(sep)
    n_valid = int((~np.isnan(iou)).sum())
    m = "n/a" if (miou is None or np.isnan(miou)) else f"{100.0 * miou:.2f}"
    lines.append(f"mIoU: {m} (mean over {n_valid}/{iou.shape[0]} classes with a defined IoU)")
    if acc is not None:
        a = "n/a" if np.isnan(acc) else f"{100.0 * acc:.2f}"
        lines.append(f"aAcc: {a}")
    return "\n".join(lines)
