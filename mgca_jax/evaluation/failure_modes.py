"""Where a segmentation fails, counted over a data set with a background label (0).

The prediction units fail in opposite ways: per-patch scores speckle (many
small fragments), segments swallow small objects. `FailureModes` counts both,
per image pair (pred, gt) of [H, W] labels:

  fragments      connected components (4-connected) of each predicted object label
  speckle        fragments of at most `speckle_frac` of the image's pixels
  small objects  ground-truth object components of at most `small_frac` of the
                 image; one is found when at least half of its pixels carry its label
  pixel errors   share of background pixels labelled as an object, of object
                 pixels labelled background, of object pixels labelled another object

Ground-truth pixels equal to `ignore_index` count in no pixel error and in no
ground-truth component; fragments are counted on the whole prediction.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def components(mask) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean [H, W] mask: (ids [H, W], count)."""
    ids, count = ndimage.label(np.asarray(mask, bool), structure=_FOUR_CONNECTED)
    return ids, int(count)


class FailureModes:
    """Accumulates the counts above; `summary()` gives per-image means and shares."""

    def __init__(self, speckle_frac: float = 0.002, small_frac: float = 0.04,
                 ignore_index: int = 255):
        self.speckle_frac, self.small_frac, self.ignore_index = speckle_frac, small_frac, ignore_index
        self.images = self.fragments = self.speckle = 0
        self.small_objects = self.small_found = 0
        self.bg_pixels = self.bg_as_object = 0
        self.object_pixels = self.object_as_bg = self.object_as_other = 0

    def update(self, pred, gt) -> None:
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"expected [H, W] pred and gt of one shape, got {pred.shape} and {gt.shape}")
        area = pred.size
        self.images += 1
        for label in np.unique(pred):
            if label == 0:
                continue
            ids, n = components(pred == label)
            self.fragments += n
            self.speckle += int((np.bincount(ids.ravel())[1:] <= self.speckle_frac * area).sum())
        valid = gt != self.ignore_index
        for label in np.unique(gt[valid]):
            if label == 0:
                continue
            ids, n = components(gt == label)
            sizes = np.bincount(ids.ravel(), minlength=n + 1)
            hits = np.bincount(ids.ravel(), weights=(pred == label).ravel(), minlength=n + 1)
            small = sizes[1:] <= self.small_frac * area
            self.small_objects += int(small.sum())
            self.small_found += int((small & (hits[1:] >= 0.5 * sizes[1:])).sum())
        bg, obj = valid & (gt == 0), valid & (gt != 0)
        self.bg_pixels += int(bg.sum())
        self.bg_as_object += int((bg & (pred != 0)).sum())
        self.object_pixels += int(obj.sum())
        self.object_as_bg += int((obj & (pred == 0)).sum())
        self.object_as_other += int((obj & (pred != 0) & (pred != gt)).sum())

    def summary(self) -> dict:
        def share(a, b):
            return a / b if b else None
        return {"images": self.images,
                "fragments_per_image": share(self.fragments, self.images),
                "speckle_per_image": share(self.speckle, self.images),
                "small_objects": self.small_objects, "small_found": self.small_found,
                "small_found_share": share(self.small_found, self.small_objects),
                "bg_as_object": share(self.bg_as_object, self.bg_pixels),
                "object_as_bg": share(self.object_as_bg, self.object_pixels),
                "object_as_other": share(self.object_as_other, self.object_pixels),
                "speckle_frac": self.speckle_frac, "small_frac": self.small_frac}


ROWS = (("fragments_per_image", "object fragments per image", "{:.2f}"),
        ("speckle_per_image", "  of them speckle (<= {speckle} % of the image)", "{:.2f}"),
        ("small_found_share", "small objects (<= {small} % of the image) found", "{:.1%}"),
        ("bg_as_object", "background pixels labelled an object", "{:.2%}"),
        ("object_as_bg", "object pixels labelled background", "{:.2%}"),
        ("object_as_other", "object pixels labelled another object", "{:.2%}"))


def format_table(summaries: dict) -> str:
    """Plain-text table, one column per unit, from {unit: FailureModes.summary()}."""
    first = next(iter(summaries.values()))
    names = [name.format(speckle=100 * first["speckle_frac"], small=100 * first["small_frac"])
             for _, name, _ in ROWS]
    width = max(len(n) for n in names)
    lines = [" " * width + "  " + "  ".join(f"{u:>9}" for u in summaries)]
    for (key, _, fmt), name in zip(ROWS, names):
        cells = ["n/a" if s[key] is None else fmt.format(s[key]) for s in summaries.values()]
        lines.append(name.ljust(width) + "  " + "  ".join(f"{c:>9}" for c in cells))
    counts = {u: f"{s['small_found']}/{s['small_objects']}" for u, s in summaries.items()}
    lines.append("(small objects found: " + ", ".join(f"{u} {c}" for u, c in counts.items()) + ")")
    return "\n".join(lines)
