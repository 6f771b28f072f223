"""Qualitative segmentation pictures (numpy + PIL only).

Conventions: a label map holds class ids ``0..C-1`` where ``class_names[i]``
names id ``i`` (for datasets with a background class pass the names *with*
"background" first); 255 is the ignore label and is drawn white. Text uses
PIL's built-in default font (no font files are downloaded).
"""
from __future__ import annotations

import colorsys
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["IGNORE_INDEX", "IGNORE_COLOR", "palette", "colorize", "overlay", "save_grid",
           "save_overlay_and_labels", "render_legend"]

IGNORE_INDEX = 255
IGNORE_COLOR = (255, 255, 255)
_BG = (255, 255, 255)
_TEXT = (0, 0, 0)
_GOLDEN = 0.6180339887498949


def palette(num_classes: int) -> np.ndarray:
    """Deterministic, visually distinct colours, uint8 (num_classes, 3).

    Index 0 is near-black (background for datasets that have one); the others
    step round the hue circle by the golden ratio with three alternating
    saturation/brightness levels, so neighbouring ids never look alike and
    no colour is pure white (white is reserved for the ignore label 255).
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    out = np.zeros((num_classes, 3), dtype=np.uint8)
    sats = (0.85, 0.55, 0.95)
    vals = (0.95, 0.80, 0.65)
    for i in range(1, num_classes):
        h = ((i - 1) * _GOLDEN) % 1.0
        s = sats[(i - 1) % 3]
        v = vals[((i - 1) // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    if num_classes:
        out[0] = (20, 20, 20)
    return out


def _check_labels(label_map: np.ndarray, num_colors: int) -> np.ndarray:
    lab = np.asarray(label_map)
    if lab.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"label map must be integer, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    bad = (lab != IGNORE_INDEX) & ((lab < 0) | (lab >= num_colors))
    if bad.any():
        raise ValueError(f"label value {int(lab[bad][0])} has no palette entry (palette has {num_colors} colours)")
    return lab


def colorize(label_map, pal) -> np.ndarray:
    """Map an (H, W) integer label map to an (H, W, 3) uint8 image; 255 -> white."""
    pal = np.asarray(pal, dtype=np.uint8)
    lab = _check_labels(label_map, pal.shape[0])
    if pal.shape[0] == 0:
        pal = np.zeros((1, 3), dtype=np.uint8)
    out = pal[np.where(lab == IGNORE_INDEX, 0, lab)]
    out[lab == IGNORE_INDEX] = IGNORE_COLOR
    return out


def _as_rgb_uint8(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64)), 0, 255).astype(np.uint8)
    return img


def overlay(image_uint8, label_map, pal, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised labels over the image: ``(1-alpha)*image + alpha*colour``.

    Ignore pixels (255) are left untinted.
    """
    img = _as_rgb_uint8(image_uint8)
    lab = np.asarray(label_map)
    if lab.shape != img.shape[:2]:
        raise ValueError(f"label map shape {lab.shape} does not match image shape {img.shape[:2]}")
    col = colorize(lab, pal).astype(np.float32)
    a = np.where((lab == IGNORE_INDEX)[..., None], 0.0, float(alpha)).astype(np.float32)
    out = (1.0 - a) * img.astype(np.float32) + a * col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- text / legend

def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow: bitmap font, fixed size
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - min(x0, 0)), int(y1 - min(y0, 0))


def render_legend(class_names: Sequence[str], pal, ids: Sequence[int] | None = None,
                  width: int = 400, font_size: int = 12) -> Image.Image:
    """A legend strip: a colour swatch and the class name for each id, in columns.

    ``ids`` selects which classes appear (default: all). The strip is ``width``
    pixels wide (wider if a single entry needs more room).
    """
    pal = np.asarray(pal, dtype=np.uint8)
    ids = list(range(len(class_names))) if ids is None else [int(i) for i in ids]
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [f"{i}: {class_names[i]}" for i in ids]
    sizes = [_text_size(probe, t, font) for t in labels] or [(0, 0)]
    text_h = max([h for _, h in sizes] + [font_size])
    sw = text_h  # square swatch as tall as the text
    pad = 6
    entry_w = sw + 4 + max(w for w, _ in sizes) + 2 * pad
    entry_h = text_h + 4
    ncols = max(1, (max(width, entry_w) - pad) // entry_w)
    nrows = max(1, -(-len(ids) // ncols))
    W = max(width, ncols * entry_w + pad)
    H = nrows * entry_h + 2 * pad
    img = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(img)
    for k, (i, t) in enumerate(zip(ids, labels)):
        r, c = divmod(k, ncols)
        x = pad + c * entry_w
        y = pad + r * entry_h
        color = tuple(int(v) for v in pal[i]) if 0 <= i < pal.shape[0] else IGNORE_COLOR
        draw.rectangle([x, y + 1, x + sw - 1, y + sw], fill=color, outline=(0, 0, 0))
        draw.text((x + sw + 4, y), t, fill=_TEXT, font=font)
    return img


def _upscale(arr: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return arr
    return np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)


def _present_ids(maps, num_classes: int) -> list[int]:
    seen = set()
    for m in maps:
        if m is None:
            continue
        u = np.unique(np.asarray(m))
        seen.update(int(v) for v in u if 0 <= v < num_classes)
    return sorted(seen)


def save_grid(path, images, gts, preds, class_names: Sequence[str],
              titles: Sequence[str] = ("image", "ground truth", "prediction"),
              scale: int = 4, legend: str = "all", alpha: float | None = None) -> tuple[int, int]:
    """Write a PNG with one row per example: image | ground truth | prediction.

    ``images``: sequence of (H, W, 3) uint8; ``gts`` / ``preds``: sequences of
    (H, W) integer label maps (``gts`` may be None: then image | prediction).
    A (U, H, W) entry of ``preds`` gives U prediction columns (name them in ``titles``).
    Every cell is nearest-neighbour upscaled by ``scale``. Above the rows is a
    header with ``titles``; below them a legend strip with every class name and
    its colour (``legend="present"`` lists only ids occurring in gts/preds,
    ``legend="none"`` drops it). ``alpha``: if given, label cells are drawn as
    overlays on the image instead of flat colours. Returns the (width, height)
    of the written picture.
    """
    n = len(images)
    if len(preds) != n or (gts is not None and len(gts) != n):
        raise ValueError("images, gts and preds must have the same length")
    if n == 0:
        raise ValueError("nothing to draw: images is empty")
    pal = palette(len(class_names))
    titles = list(titles)
    if gts is None and len(titles) == 3:
        titles = [titles[0], titles[2]]
    rows = []
    for k in range(n):
        img = _as_rgb_uint8(images[k])
        cells = [img]
        pred = np.asarray(preds[k])
        for lab in ([gts[k]] if gts is not None else []) + (list(pred) if pred.ndim == 3 else [pred]):
            lab = np.asarray(lab)
            if alpha is not None and lab.shape == img.shape[:2]:
                cells.append(overlay(img, lab, pal, alpha))
            else:
                cells.append(colorize(lab, pal))
        rows.append([_upscale(c, scale) for c in cells])
    ncols = len(rows[0])
    gap = 4
    col_w = [max(r[c].shape[1] for r in rows) for c in range(ncols)]
    row_h = [max(c.shape[0] for c in r) for r in rows]
    font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    header_h = max([_text_size(probe, t, font)[1] for t in titles] + [14]) + 2 * gap
    grid_w = sum(col_w) + gap * (ncols + 1)
    grid_h = header_h + sum(row_h) + gap * n
    legend_img = None
    if legend != "none":
        ids = None if legend == "all" else _present_ids(
            [np.asarray(p) for p in preds] + (list(gts) if gts is not None else []), len(class_names))
        legend_img = render_legend(class_names, pal, ids=ids, width=grid_w)
    W = max(grid_w, legend_img.width if legend_img else 0)
    H = grid_h + (legend_img.height + gap if legend_img else 0)
    canvas = Image.new("RGB", (W, H), _BG)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for c in range(ncols):
        t = titles[c] if c < len(titles) else ""
        tw, _ = _text_size(draw, t, font)
        draw.text((x + max(0, (col_w[c] - tw) // 2), gap), t, fill=_TEXT, font=font)
        x += col_w[c] + gap
    y = header_h
    for r, cells in enumerate(rows):
        x = gap
        for c, cell in enumerate(cells):
            canvas.paste(Image.fromarray(cell), (x, y))
            x += col_w[c] + gap
        y += row_h[r] + gap
    if legend_img is not None:
        draw.line([(0, y), (W, y)], fill=(160, 160, 160))
        canvas.paste(legend_img, (0, y + gap))
    _ensure_parent(path)
    canvas.save(path, format="PNG")
    return canvas.size


def _ensure_parent(path) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def save_overlay_and_labels(image, pred, class_names: Sequence[str], overlay_path, label_path,
                            alpha: float = 0.5, legend: str = "present", scale: int = 1) -> None:
    """Write (1) an overlay PNG of ``pred`` on ``image`` with a legend strip below it
    (by default listing the classes that occur in ``pred``; ``scale`` enlarges the
    overlay, nearest-neighbour) and (2) a single-channel uint8 PNG holding the raw
    class ids of ``pred`` at the image's own resolution."""
    img = _as_rgb_uint8(image)
    pred = np.asarray(pred)
    if pred.shape != img.shape[:2]:
        raise ValueError(f"prediction shape {pred.shape} does not match image shape {img.shape[:2]}")
    if not np.issubdtype(pred.dtype, np.integer):
        raise ValueError(f"prediction must be integer, got dtype {pred.dtype}")
    if pred.size and (pred.min() < 0 or pred.max() > 255):
        raise ValueError(f"prediction value {int(pred.min() if pred.min() < 0 else pred.max())} does not fit a uint8 PNG")
    pal = palette(len(class_names))
    ov = Image.fromarray(_upscale(overlay(img, pred, pal, alpha), int(scale)))
    if legend != "none":
        ids = None if legend == "all" else _present_ids([pred], len(class_names))
        leg = render_legend(class_names, pal, ids=ids, width=ov.width)
        canvas = Image.new("RGB", (max(ov.width, leg.width), ov.height + leg.height), _BG)
        canvas.paste(ov, (0, 0))
        canvas.paste(leg, (0, ov.height))
        ov = canvas
    _ensure_parent(overlay_path)
    ov.save(overlay_path, format="PNG")
    _ensure_parent(label_path)
    Image.fromarray(np.ascontiguousarray(pred.astype(np.uint8))).save(label_path, format="PNG")
