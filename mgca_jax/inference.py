"""Zero-shot segmentation with three prediction units, sharded over local devices.

A unit turns the normalised patch embeddings of one window, p [N, E], and the
class embeddings T [C, E] (`zeroshot.class_embeddings`) into per-patch class
scores [N, C]:

  pixel     every patch on its own: p_n . t_c
  group     k-means segments of p; each patch takes its segment's pooled score
  adaptive  per segment, the group unit's score where the segment's patches
            mostly agree with its label and look alike (coarse), else each
            patch's own score (fine); disagreeing outliers keep their own

The unit functions are pure and shape-static (they jit, vmap and pmap).
`Segmenter` runs them with the field protocol of `evaluation/protocol.py`
(resize the short side, sliding windows, stitching, background rule): the
windows of a list of images are batched together and sharded over local
devices with `jax.pmap`. `make_segmenter` is the one inference path: the
trainer's evaluation, `evaluate`, `segment` and `mgca_jax.load` all build their
predict functions with it. docs/method.md ("Inference: prediction units") states
the rules, their defaults and their cost.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mgca_jax.evaluation import protocol, zeroshot
from mgca_jax.losses import l2_normalize, soft_kmeans
from mgca_jax.models import vit

UNITS = ("pixel", "group", "adaptive")


@dataclasses.dataclass(frozen=True)
class UnitConfig:
    """Hyperparameters of the group and adaptive units."""
    num_groups: int = 8             # G segments per window (k-means on normalised patches)
    group_iters: int = 5            # soft k-means updates, as in the region loss
    group_temperature: float = 0.1  # soft k-means assignment temperature
    agreement_thresh: float = 0.6   # adaptive: a segment is labelled whole when this share of
    coherence_thresh: float = 0.8   # its patches agree with it and they look alike (mean cosine)
    outlier_thresh: float = 0.5     # a disagreeing patch less similar than this keeps its label

    def __post_init__(self):
        if int(self.num_groups) < 1:
            raise ValueError(f"num_groups: expected a positive integer, got {self.num_groups!r}")
        if int(self.group_iters) < 0:
            raise ValueError(f"group_iters: expected a non-negative integer, got {self.group_iters!r}")
        if not self.group_temperature > 0:
            raise ValueError(f"group_temperature: expected > 0, got {self.group_temperature!r}")
        for name, low in (("agreement_thresh", 0.0), ("coherence_thresh", -1.0), ("outlier_thresh", -1.0)):
            value = getattr(self, name)
            if not low <= value <= 1.0:            # also rejects NaN
                raise ValueError(f"{name}: expected a value in [{low:g}, 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """The field's protocol (protocol.py): keep-ratio resize, then sliding windows."""
    short_side: int = 448
    max_long: int = 2048
    crop: int = 448
    stride: int = 224


FIELD_TEST_SCALE = 2.0     # the field trains at 224 and scores with ProtocolConfig(): 448 / 224


def default_protocol(train_size: int | None = None,
                     test_scale: float = FIELD_TEST_SCALE) -> tuple[int, int, int]:
    """(short side, crop, stride): the field's for a benchmark; for a model trained at
    `train_size`, short side and window `test_scale` x train_size and stride half the window
    (at the field's scale 2 the ratios of 448/448/224 to 224)."""
    d = ProtocolConfig()
    if not train_size:
        return d.short_side, d.crop, d.stride
    if not (isinstance(test_scale, (int, float)) and test_scale > 0):
        raise ValueError(f"test_scale: expected a positive number, got {test_scale!r}")
    side = max(int(round(train_size * test_scale)), 1)
    return side, side, max(side // 2, 1)


def config_test_scale(config) -> float:
    """`config.eval.test_scale`; the field's 2 for configs from before the field."""
    return config.eval.get("test_scale", FIELD_TEST_SCALE) if "eval" in config else FIELD_TEST_SCALE


def config_protocol(config) -> tuple[int, int, int]:
    """(short side, crop, stride) for a model trained with `config`: its test scale times its
    training size."""
    return default_protocol(int(config.input.image_size), config_test_scale(config))


# --------------------------------------------------------------------------- units

def _one_hot(ids, num, dtype=jnp.float32):
    return jax.nn.one_hot(ids, num, dtype=dtype)


def pool(p, ids, num: int):
    """Normalised mean of p [N, E] per id in [0, num): [num, E] (zero rows for empty ids)."""
    return l2_normalize(_one_hot(ids, num, p.dtype).T @ p)


def group_segments(p, cfg: UnitConfig):
    """Segment id [N] in [0, G) of each normalised patch: soft k-means centroids from G
    evenly spaced patches (the region loss's `soft_kmeans`), then the nearest centroid."""
    centres = soft_kmeans(p[None], cfg.num_groups, cfg.group_iters, cfg.group_temperature)[0]
    return jnp.argmax(p @ centres.T, axis=-1)


def pixel_unit(p, class_emb, cfg: UnitConfig = UnitConfig(), bg_thresh=None):
    """Scores [N, C]: each patch's cosine with each class."""
    del cfg, bg_thresh
    return l2_normalize(p) @ class_emb.T


def group_unit(p, class_emb, cfg: UnitConfig = UnitConfig(), bg_thresh=None):
    """Scores [N, C]: every patch takes the score of its segment's pooled embedding."""
    del bg_thresh
    p = l2_normalize(p)
    seg = group_segments(p, cfg)
    return (pool(p, seg, cfg.num_groups) @ class_emb.T)[seg]


def adaptive_unit(p, class_emb, cfg: UnitConfig = UnitConfig(), bg_thresh=None, with_aux=False):
    """Scores [N, C]: each segment labelled whole (coarse) or patch by patch (fine).

    Segment g (pooled z_g, label y_g); y_n is the pixel unit's label of patch n
    (background rule included):
      agreement a_g = mean_{n in g} [y_n == y_g]
      coherence k_g = mean_{n in g} p_n . z_g
    g is coarse iff a_g >= agreement_thresh and k_g >= coherence_thresh; its
    patches take z_g's score, except outliers (y_n != y_g and p_n . z_g <
    outlier_thresh), which keep their own. Patches of a fine segment keep their
    pixel scores. `with_aux` also returns the segments, a, k and the decisions.
    """
    p = l2_normalize(p)
    g = cfg.num_groups
    seg = group_segments(p, cfg)                                        # [N]
    onehot = _one_hot(seg, g, p.dtype)                                  # [N, G]
    centres = pool(p, seg, g)                                           # [G, E]
    seg_scores = centres @ class_emb.T                                  # [G, C]
    pix_scores = p @ class_emb.T                                        # [N, C]
    agrees = (protocol.predict_labels(pix_scores, bg_thresh)
              == protocol.predict_labels(seg_scores, bg_thresh)[seg])   # [N]
    cos = jnp.sum(p * centres[seg], axis=-1)                            # [N]
    count = jnp.maximum(onehot.sum(0), 1)
    agreement = onehot.T @ agrees.astype(p.dtype) / count               # [G]
    coherence = onehot.T @ cos / count                                  # [G]
    coarse = (agreement >= cfg.agreement_thresh) & (coherence >= cfg.coherence_thresh)
    outlier = ~agrees & (cos < cfg.outlier_thresh)
    fine = ~coarse[seg] | outlier                                       # [N]
    scores = jnp.where(fine[:, None], pix_scores, seg_scores[seg])
    if not with_aux:
        return scores
    return scores, {"segments": seg, "agreement": agreement, "coherence": coherence,
                    "coarse": coarse, "outlier": outlier, "fine": fine}


UNIT_FNS = {"pixel": pixel_unit, "group": group_unit, "adaptive": adaptive_unit}


def unit_scores(unit: str, p, class_emb, cfg: UnitConfig = UnitConfig(), bg_thresh=None):
    """Scores [N, C] of the unit named `unit` for one window's patches p [N, E]."""
    if unit not in UNIT_FNS:
        raise ValueError(f"unknown unit {unit!r}; choose from {list(UNITS)}")
    return UNIT_FNS[unit](p, class_emb, cfg, bg_thresh)


# --------------------------------------------------------------------------- model

def patch_grid(model, hw: Sequence[int]) -> tuple[int, int]:
    """Patch grid of the image tower for an (H, W) input."""
    patch = vit.parse_variant(model.image_variant)["patch"]
    h, w = int(hw[0]), int(hw[1])
    if getattr(model, "image_stem", "patch") == "conv":   # stride-2 SAME convolutions round up
        return -(-h // patch), -(-w // patch)
    return h // patch, w // patch


def fit_pos_embedding(params, grid: Sequence[int]):
    """Params whose (square-trained) image position embedding is resized, bicubic, to `grid`."""
    pos = params["image_tower"]["pos_embedding"]                      # [1, n0, c]
    side = math.isqrt(pos.shape[1])
    gh, gw = int(grid[0]), int(grid[1])
    if side * side != pos.shape[1]:
        if pos.shape[1] == gh * gw:
            return params
        raise ValueError(f"cannot resize a non-square position embedding of {pos.shape[1]} "
                         f"positions to a {gh}x{gw} grid")
    if (gh, gw) == (side, side):
        return params
    new = jax.image.resize(pos.reshape(side, side, -1), (gh, gw, pos.shape[-1]), "cubic",
                           antialias=False).reshape(1, gh * gw, -1)
    return {**params, "image_tower": {**params["image_tower"], "pos_embedding": new}}


def window_unit_scores(model, units, cfg, bg_thresh, params, crops, class_emb):
    """crops [n, H, W, 3] (normalised) -> patch-grid scores [len(units), n, h, w, C]."""
    params = fit_pos_embedding(params, patch_grid(model, crops.shape[1:3]))
    out = model.apply({"params": params}, crops, method=model.encode_image)
    h, w = out["grid"]
    p = l2_normalize(out["patch_embed"])
    per_unit = [jax.vmap(functools.partial(UNIT_FNS[u], class_emb=class_emb, cfg=cfg,
                                           bg_thresh=bg_thresh))(p) for u in units]
    return jnp.stack(per_unit).reshape(len(units), crops.shape[0], h, w, -1)


def upsample(scores, hw: Sequence[int]):
    """Bilinear (half-pixel, no antialias) resize of [..., h, w, C] scores to (H, W)."""
    shape = scores.shape[:-3] + (int(hw[0]), int(hw[1]), scores.shape[-1])
    return jax.image.resize(scores, shape, "linear", antialias=False)


def replicate(tree, devices):
    """Copies of `tree` on every device, laid out for `jax.pmap` (leading axis = device)."""
    n = len(devices)
    stacked = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n,) + np.shape(a)), tree)
    return _pmapped_identity(tuple(devices))(stacked)


@functools.lru_cache(maxsize=16)
def _pmapped_identity(devices):
    return jax.pmap(lambda t: t, devices=list(devices))


# --------------------------------------------------------------------------- segmenter

@functools.lru_cache(maxsize=16)
def _pmapped(model, units, unit_config, bg_thresh, devices):
    """One pmapped scorer per setting, so Segmenters that share it share compilations."""
    fn = functools.partial(window_unit_scores, model, units, unit_config, bg_thresh)
    return jax.pmap(fn, in_axes=(0, 0, None), devices=list(devices))


class Segmenter:
    """Per-pixel labels of a list of images for one or more units, windows sharded with pmap.

    `segment(images)` runs the protocol on uint8 (H, W, 3) images of any size:
    resize the short side, normalise, cut sliding windows, score the windows of
    all images together (padded to whole device batches, padding dropped after),
    upsample each window's scores, stitch, resize to the image, then the
    background rule (label 0 = background when `bg_thresh` is set, else class c
    is label c).
    """

    def __init__(self, model, params, class_emb, *, units: Sequence[str] = ("adaptive",),
                 unit_config: UnitConfig = UnitConfig(),
                 protocol_config: ProtocolConfig = ProtocolConfig(),
                 bg_thresh: float | None = None, devices=None, windows_per_device: int = 4):
        self.units = tuple(units)
        bad = [u for u in self.units if u not in UNIT_FNS]
        if bad or not self.units:
            raise ValueError(f"unknown unit {bad[0] if bad else None!r}; choose from {list(UNITS)}")
        if windows_per_device < 1:
            raise ValueError(f"windows_per_device: expected >= 1, got {windows_per_device}")
        self.protocol = protocol_config
        self.bg_thresh = None if bg_thresh is None else float(bg_thresh)
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.windows_per_device = int(windows_per_device)
        self.class_emb = jnp.asarray(class_emb, jnp.float32)
        self._params = replicate(params, self.devices)
        self._fn = _pmapped(model, self.units, unit_config, self.bg_thresh, tuple(self.devices))

    @property
    def num_classes(self) -> int:
        return int(self.class_emb.shape[0])

    def window_scores(self, crops) -> np.ndarray:
        """crops [n, H, W, 3] (normalised) -> patch-grid scores [U, n, h, w, C] (host)."""
        crops = np.asarray(crops, np.float32)
        d, outs = len(self.devices), []
        for start in range(0, crops.shape[0], d * self.windows_per_device):
            chunk = crops[start:start + d * self.windows_per_device]
            # Always whole calls of d x windows_per_device: one program per window size, and
            # labels that do not depend on how the caller batches its images.
            per_device = self.windows_per_device
            padded = np.zeros((d * per_device,) + chunk.shape[1:], np.float32)
            padded[:chunk.shape[0]] = chunk
            res = np.asarray(self._fn(self._params, padded.reshape((d, per_device) + chunk.shape[1:]),
                                      self.class_emb))                  # [D, U, m, h, w, C]
            res = np.moveaxis(res, 0, 1).reshape((len(self.units), d * per_device) + res.shape[3:])
            outs.append(res[:, :chunk.shape[0]])
        return np.concatenate(outs, axis=1)

    def predict_fn(self, unit: str | None = None):
        """images (uint8, any sizes) -> list of [H, W] int32 labels of `unit` (default: the
        first): the predict function that evaluators receive."""
        k = self.units.index(unit or self.units[0])
        return lambda images: [labels[k] for labels in self.segment(list(images))]

    def _windows(self, image):
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
        pc = self.protocol
        x = np.asarray(protocol.normalize(protocol.resize_short_side(img, pc.short_side, pc.max_long)))
        wins = protocol.window_positions(x.shape[0], x.shape[1], pc.crop, pc.stride)
        crops = np.stack([x[y1:y2, x1:x2] for (y1, y2, x1, x2) in wins])
        return crops, wins, x.shape[:2]

    def segment(self, images, return_logits: bool = False):
        """Per image: labels [U, H, W] int32 (with `return_logits`, also logits [U, H, W, C])."""
        prepared = [self._windows(img) for img in images]
        by_shape: dict[tuple, list[int]] = {}
        for i, (crops, _, _) in enumerate(prepared):
            by_shape.setdefault(crops.shape[1:3], []).append(i)
        window_scores = [None] * len(prepared)
        for idx in by_shape.values():
            scores = self.window_scores(np.concatenate([prepared[i][0] for i in idx]))
            offsets = np.cumsum([0] + [len(prepared[i][1]) for i in idx])
            for j, i in enumerate(idx):
                window_scores[i] = scores[:, offsets[j]:offsets[j + 1]]
        labels, logits = [], []
        for image, (crops, wins, hw), scores in zip(images, prepared, window_scores):
            per_unit_labels, per_unit_logits = [], []
            for u in range(len(self.units)):
                lg = protocol.stitch_windows(upsample(jnp.asarray(scores[u]), crops.shape[1:3]),
                                             wins, *hw)
                lg = protocol.resize_logits(lg, np.shape(image)[:2])
                per_unit_labels.append(np.asarray(protocol.predict_labels(lg, self.bg_thresh)))
                if return_logits:
                    per_unit_logits.append(np.asarray(lg))
            labels.append(np.stack(per_unit_labels))
            if return_logits:
                logits.append(np.stack(per_unit_logits))
        return (labels, logits) if return_logits else labels


def make_segmenter(model, params, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                   max_len: int, *, units: Sequence[str] = ("adaptive",),
                   protocol_config: ProtocolConfig = ProtocolConfig(),
                   unit_config: UnitConfig = UnitConfig(), bg_thresh: float | None = None,
                   windows_per_device: int = 4, devices=None) -> Segmenter:
    """The one inference path: class embeddings of the prompt ensemble, then a `Segmenter`.
    The trainer's evaluation, `evaluate`, `segment` and `mgca_jax.load` all call this."""
    class_emb = zeroshot.class_embeddings(model, params, tokenizer, tuple(class_names),
                                          tuple(templates), max_len)
    return Segmenter(model, params, class_emb, units=units, unit_config=unit_config,
                     protocol_config=protocol_config, bg_thresh=bg_thresh, devices=devices,
                     windows_per_device=windows_per_device)
