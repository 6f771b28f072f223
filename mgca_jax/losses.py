"""Training objective: a weighted sum of named contrastive terms.

Every term is written for one device's shard of the batch and runs inside
`jax.shard_map` over the "data" axis; it gathers what it contrasts against with
`all_gather` over `axis_name`, so negatives come from the global batch. A term
returns the mean over its local anchors and a count; the total averages over
devices weighted by count. Equations and shapes: docs/method.md.
"""
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mgca_jax.sharding import DATA


def l2_normalize(x, axis=-1, eps=1e-6):
    return x / jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True) + eps)


def gather(x, axis_name):
    """All shards of x concatenated along axis 0 (identity without an axis)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def shard_offset(local_size, axis_name):
    return 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_size


def cross_entropy(logits, labels, weights=None):
    """Mean (or weighted mean) softmax cross-entropy with integer labels."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if weights is None:
        return nll.mean(), jnp.asarray(nll.size, jnp.float32)
    weights = weights.astype(nll.dtype)
    count = weights.sum()
    return (nll * weights).sum() / jnp.maximum(count, 1.0), count


def image_text_term(out, batch, cfg, axis_name, rng):
    """Symmetric InfoNCE between pooled image and caption embeddings.

    Local rows [b] against the gathered global batch [B]; positives on the
    (offset + i) diagonal.
    """
    del batch, cfg, rng
    img = l2_normalize(out["image_embed"])
    txt = l2_normalize(out["text_embed"])
    b = img.shape[0]
    labels = shard_offset(b, axis_name) + jnp.arange(b)
    scale = out["logit_scale"]
    i2t, n = cross_entropy(scale * img @ gather(txt, axis_name).T, labels)
    t2i, _ = cross_entropy(scale * txt @ gather(img, axis_name).T, labels)
    return 0.5 * (i2t + t2i), n


TERMS: dict[str, Callable] = {
    "image_text": image_text_term,
}
NEEDS_OBJECTS = set()  # terms that use object_embed


def needs_objects(loss_cfg) -> bool:
    return bool(NEEDS_OBJECTS & set(active_terms(loss_cfg)))


def active_terms(loss_cfg) -> dict[str, float]:
    """Names and weights of the terms with non-zero weight (others cost nothing)."""
    weights = {k: float(v) for k, v in loss_cfg.weights.items() if float(v) != 0.0}
    unknown = sorted(set(weights) - set(TERMS))
    if unknown:
        raise ValueError(f"config.loss.weights: unknown term(s) {unknown}; known: {sorted(TERMS)}")
    return weights


def total_loss(out, batch, loss_cfg, mesh, rng):
    """Weighted sum of the active terms, computed under shard_map over `mesh`.

    out/batch leaves have the global batch as leading axis (logit_scale is a
    scalar). `rng` is folded with the device index for per-device sampling.
    Returns (total, {name: value}).
    """
    weights = active_terms(loss_cfg)
    batch_keys = [k for k in ("object_ids", "object_mask") if k in batch]
    local_batch = {k: batch[k] for k in batch_keys}
    out = {k: v for k, v in out.items() if k != "grid"}
    specs_out = {k: (P() if jnp.ndim(v) == 0 else P(DATA)) for k, v in out.items()}
    specs_batch = {k: P(DATA) for k in local_batch}

    def per_device(out, local_batch, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(DATA))
        values = {}
        for i, name in enumerate(weights):
            value, count = TERMS[name](out, local_batch, loss_cfg, DATA, jax.random.fold_in(rng, i))
            # Global mean = sum of local sums / global count.
            total_count = jax.lax.psum(count, DATA)
            values[name] = jax.lax.psum(value * count, DATA) / jnp.maximum(total_count, 1.0)
        return values

    values = jax.shard_map(per_device, mesh=mesh, in_specs=(specs_out, specs_batch, P()),
                           out_specs=P())(out, local_batch, rng)
    total = sum(weights[k] * values[k] for k in weights)
    return total, values
