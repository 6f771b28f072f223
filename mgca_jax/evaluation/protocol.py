"""The zero-shot segmentation inference protocol of the field, model-agnostic.

Facts matched (mmsegmentation 0.x as configured by the public GroupViT and TCL
configs, NVlabs/GroupViT and kakaobrain/tcl):

1. resize keeping the aspect ratio with mmseg ``img_scale=(2048, 448)``,
   ``keep_ratio=True``: ``s = min(2048 / long_side, 448 / short_side)``, new
   size ``int(w * s + 0.5) x int(h * s + 0.5)`` (mmcv's rounding), bilinear;
2. normalise with the ImageNet mean/std (RGB, 0..255 scale);
3. sliding window 448x448, stride 224, placed exactly like mmseg's
   ``slide_inference``; overlapping logits are summed and divided by the
   per-pixel window count;
4. logits resized (bilinear, half-pixel centres, no antialiasing, i.e.
   ``align_corners=False``) to the original image size, then argmax;
5. for datasets with a background class, TCL's rule: a constant map equal to
   ``bg_thresh`` is put in front of the class scores before argmax.

No flip, single scale. Resizing uses ``jax.image.resize(..., "linear",
antialias=False)``, which equals OpenCV's / PyTorch's bilinear with
half-pixel centres and edge clamping; mmseg additionally rounds the resized
image back to uint8 — we keep it in float (a difference of at most half a
grey level).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "normalize", "rescaled_size", "resize_short_side",
    "window_positions", "sliding_window_logits", "stitch_windows", "resize_logits", "predict_labels",
    "infer_logits", "TEMPLATES", "get_templates",
]

# RGB, 0..255 scale (mmseg img_norm_cfg of GroupViT / TCL).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

LogitsFn = Callable[[jax.Array], jax.Array]


def normalize(img) -> jax.Array:
    """(x - mean) / std per RGB channel; input on the 0..255 scale, last axis = 3."""
    x = jnp.asarray(img, dtype=jnp.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected RGB images with a trailing axis of 3, got shape {x.shape}")
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def rescaled_size(h: int, w: int, short: int = 448, max_long: int = 2048) -> tuple[int, int]:
    """(new_h, new_w) for mmseg's keep-ratio resize with ``img_scale=(max_long, short)``."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    long_edge, short_edge = max(max_long, short), min(max_long, short)
    s = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * s + 0.5), int(w * s + 0.5)


def resize_short_side(image, short: int = 448, max_long: int = 2048) -> jax.Array:
    """Bilinear keep-ratio resize of an (H, W, C) image; returns float32.

    Scale = ``min(max_long / long_side, short / short_side)`` (small images are
    enlarged too, as in mmseg).
    """
    x = jnp.asarray(image, dtype=jnp.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {x.shape}")
    nh, nw = rescaled_size(x.shape[0], x.shape[1], short, max_long)
    if (nh, nw) == x.shape[:2]:
        return x
    return jax.image.resize(x, (nh, nw, x.shape[2]), method="linear", antialias=False)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def window_positions(h: int, w: int, crop=448, stride=224) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` exactly as mmseg's ``slide_inference`` places them.

    ``h_grids = max(h - crop_h + stride_h - 1, 0) // stride_h + 1`` (same for w);
    window (i, j) starts at ``(i * stride_h, j * stride_w)``, is clipped to the
    image and then shifted back so that it is ``crop`` wide whenever the image
    allows. Images smaller than the crop get a single, smaller window.
    """
    ch, cw = _pair(crop)
    sh, sw = _pair(stride)
    if min(ch, cw, sh, sw) <= 0:
        raise ValueError(f"crop and stride must be positive, got crop={crop}, stride={stride}")
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    out = []
    for i in range(h_grids):
        for j in range(w_grids):
            y1, x1 = i * sh, j * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out.append((y1, y2, x1, x2))
    return out


def sliding_window_logits(image, logits_fn: LogitsFn, num_classes: int, crop=448, stride=224,
                          batch_size: int | None = None) -> jax.Array:
    """Stitch per-window logits into (H, W, num_classes) float32 logits.

    ``image``: (H, W, 3) float (already resized / normalised as the model wants).
    ``logits_fn``: maps a batch of crops (n, ch, cw, 3) to logits
    (n, ch, cw, num_classes) at crop resolution (the model adapter upsamples
    its own patch-level output). All windows of one image have the same size,
    so they go through ``logits_fn`` in batches of ``batch_size`` (default: all
    at once). Overlaps are summed and divided by the per-pixel window count.
    """
    x = jnp.asarray(image, dtype=jnp.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {x.shape}")
    h, w = x.shape[:2]
    wins = window_positions(h, w, crop, stride)
    wh, ww = wins[0][1] - wins[0][0], wins[0][3] - wins[0][2]
    crops = [x[y1:y2, x1:x2] for (y1, y2, x1, x2) in wins]
    bs = len(crops) if not batch_size else int(batch_size)
    outs = []
    for k in range(0, len(crops), bs):
        batch = jnp.stack(crops[k:k + bs])
        lg = jnp.asarray(logits_fn(batch))
        expected = (batch.shape[0], wh, ww, num_classes)
        if tuple(lg.shape) != expected:
            raise ValueError(f"logits_fn returned shape {tuple(lg.shape)}, expected {expected}")
        outs.append(lg.astype(jnp.float32))
    return stitch_windows(jnp.concatenate(outs, axis=0), wins, h, w)


def stitch_windows(window_logits, windows, h: int, w: int) -> jax.Array:
    """(n, wh, ww, C) logits of ``windows`` (from :func:`window_positions`) -> (h, w, C):
    summed into place and divided by the per-pixel window count."""
    logits = jnp.asarray(window_logits, dtype=jnp.float32)
    if logits.shape[0] != len(windows):
        raise ValueError(f"{logits.shape[0]} window logits for {len(windows)} windows")
    acc = jnp.zeros((h, w, logits.shape[-1]), jnp.float32)
    count = np.zeros((h, w, 1), np.float32)
    for k, (y1, y2, x1, x2) in enumerate(windows):
        acc = _add_window(acc, logits[k], y1, x1)
        count[y1:y2, x1:x2] += 1.0
    assert count.min() > 0, "every pixel is covered by at least one window"
    return acc / jnp.asarray(count)


@jax.jit
def _add_window(acc, window, y1, x1):
    """acc[y1:, x1:] += window; the offsets are traced, so one compilation serves every position."""
    start = (y1, x1, jnp.zeros_like(y1))
    cur = jax.lax.dynamic_slice(acc, start, window.shape)
    return jax.lax.dynamic_update_slice(acc, cur + window, start)


def resize_logits(logits, out_hw: Sequence[int]) -> jax.Array:
    """Bilinear resize of (H, W, C) logits to ``out_hw`` (align_corners=False, no antialias)."""
    x = jnp.asarray(logits, dtype=jnp.float32)
    oh, ow = int(out_hw[0]), int(out_hw[1])
    if (oh, ow) == tuple(x.shape[:2]):
        return x
    return jax.image.resize(x, (oh, ow, x.shape[2]), method="linear", antialias=False)


def predict_labels(logits_hw_c, bg_thresh: float | None = None) -> jax.Array:
    """Argmax over the last axis (int32).

    With ``bg_thresh`` (TCL's rule): a constant score map equal to ``bg_thresh``
    is prepended before argmax, so label 0 = background (no class beats the
    threshold) and class ``c`` becomes label ``c + 1``. Ties go to the lower
    index, i.e. to background when a score equals the threshold exactly.
    """
    x = jnp.asarray(logits_hw_c)
    if bg_thresh is not None:
        bg = jnp.full(x.shape[:-1] + (1,), bg_thresh, dtype=x.dtype)
        x = jnp.concatenate([bg, x], axis=-1)
    return jnp.argmax(x, axis=-1).astype(jnp.int32)


def infer_logits(image_uint8, logits_fn: LogitsFn, num_classes: int, *, short: int = 448,
                 max_long: int = 2048, crop=448, stride=224, normalize_input: bool = True,
                 batch_size: int | None = None) -> jax.Array:
    """The whole protocol for one image: resize -> normalise -> sliding window ->
    resize back to the original (H, W). Returns (H, W, num_classes) logits; feed
    them to :func:`predict_labels`."""
    img = jnp.asarray(image_uint8)
    h, w = img.shape[:2]
    x = resize_short_side(img, short, max_long)
    if normalize_input:
        x = normalize(x)
    lg = sliding_window_logits(x, logits_fn, num_classes, crop, stride, batch_size)
    return resize_logits(lg, (h, w))


# --------------------------------------------------------------------------- prompts

_SUBSET = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# CLIP's 80 ImageNet prompt templates (the "full" set), in CLIP's order.
_FULL = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.",
    "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "simple": ("a photo of a {}.",),                                   # GroupViT segmentation
    "subset": _SUBSET,                                                  # CLIP's 7
    "custom": _SUBSET + ("a photo of many {}.", "a photo of {}s."),    # TCL's 9 (default)
    "full": _FULL,                                                      # CLIP's 80
}
DEFAULT_TEMPLATES = "custom"


def get_templates(name: str = DEFAULT_TEMPLATES) -> tuple[str, ...]:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template set {name!r}; choose from {sorted(TEMPLATES)}") from None
