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
    """Symmetric InfoNCE between images and captions over the global batch.

    Local rows [b] against the gathered global batch [B]; positives on the
    (offset + i) diagonal. The image-caption score is the cosine of the pooled
    (mean) embeddings, or with `image_text_pool="topk"` the mean of the top
    `image_text_topk` fraction of patch-caption cosines (multiple-instance
    pooling: a caption must match some patches, not the image average).
    """
    del batch, rng
    txt = l2_normalize(out["text_embed"])
    b = txt.shape[0]
    offset = shard_offset(b, axis_name)
    labels = offset + jnp.arange(b)
    scale = out["logit_scale"]
    if cfg.get("image_text_pool", "mean") == "topk":
        sim = topk_pooled_scores(out["patch_embed"], gather(txt, axis_name),
                                 float(cfg.get("image_text_topk", 0.25)))        # [b, B]
        full = gather(sim, axis_name)                                           # [B, B]
        i2t, n = cross_entropy(scale * sim, labels)
        t2i, _ = cross_entropy(scale * jax.lax.dynamic_slice_in_dim(full, offset, b, axis=1).T, labels)
        return 0.5 * (i2t + t2i), n
    img = l2_normalize(out["image_embed"])
    i2t, n = cross_entropy(scale * img @ gather(txt, axis_name).T, labels)
    t2i, _ = cross_entropy(scale * txt @ gather(img, axis_name).T, labels)
    return 0.5 * (i2t + t2i), n


def topk_pooled_scores(patch_embed, texts, fraction):
    """patch_embed [b, N, E], texts [B, E] (normalised) -> [b, B]: mean of the
    top ceil(fraction * N) patch cosines of each image for each text."""
    n = patch_embed.shape[1]
    k = max(1, min(n, int(-(-fraction * n // 1))))
    cos = jnp.einsum("bne,te->btn", l2_normalize(patch_embed), texts)
    return jax.lax.top_k(cos, k)[0].mean(-1)


NEG = -1e9  # logit of an excluded candidate


def _tau(cfg, name, out):
    """1 / temperature for a term: fixed by config, or the learnable scale when <= 0."""
    t = float(cfg.get(f"{name}_temperature", 0.0))
    return out["logit_scale"] if t <= 0 else 1.0 / t


def attention_pool(p, q, temperature):
    """p [b, N, E], q [b, c, E] (normalised) -> [b, c, E]: per query, the normalised
    softmax_n(p[n].q / temperature)-weighted mean of the patches."""
    att = jax.nn.softmax(jnp.einsum("bce,bne->bcn", q, p) / temperature, axis=-1)
    return l2_normalize(jnp.einsum("bcn,bne->bce", att, p))


def candidate_scores(p, units, temperature, chunk):
    """[b, J]: each unit j pools image i's patches with itself as the query and scores
    the result, s[i, j] = z(i, j).o[j] -- "how well does image i show word j"."""
    b, e = p.shape[0], p.shape[-1]
    c = _largest_divisor(units.shape[0], chunk)

    def scores(uc):                                                   # [c, E] -> [b, c]
        q = jnp.broadcast_to(uc[None], (b, *uc.shape))
        return jnp.einsum("bce,ce->bc", attention_pool(p, q, temperature), uc)

    s = jax.lax.map(scores, units.reshape(-1, c, e))                  # [J/c, b, c]
    return s.transpose(1, 0, 2).reshape(b, -1)


def object_term(out, batch, cfg, axis_name, rng):
    """Object level: text-grounded object units against the global batch's units.

    z[i,k] = norm(sum_n softmax_n(p[i,n].o[i,k] / tau_attn) p[i,n]). With
    `object_query="candidate"` every candidate unit o[j,l] is scored
    by pooling image i with its own query, z(i, jl).o[j,l], so a candidate word
    scores high only where the image shows it; with "own" the candidates are
    scored against the positive's pooling, z[i,k].o[j,l] (the default; docs/method.md
    says how it can be solved without looking at the image). Units with the same
    word as the positive (other than the positive itself) are not negatives.
    """
    del rng
    p = l2_normalize(out["patch_embed"])                    # [b, N, E]
    o = l2_normalize(out["object_embed"])                   # [b, K, E]
    ids, valid = batch["object_ids"], batch["object_mask"]  # [b, K]
    b, k = ids.shape
    all_o = gather(o, axis_name).reshape(-1, o.shape[-1])   # [B*K, E]
    all_ids = gather(ids, axis_name).reshape(-1)
    all_valid = gather(valid, axis_name).reshape(-1)
    pos = (shard_offset(b, axis_name) + jnp.arange(b))[:, None] * k + jnp.arange(k)[None, :]
    is_pos = pos[:, :, None] == jnp.arange(all_ids.shape[0])[None, None, :]
    allowed = is_pos | (all_valid[None, None, :] & (all_ids[None, None, :] != ids[:, :, None]))
    query = cfg.get("object_query", "own")
    if query == "candidate":
        sims = jnp.broadcast_to(candidate_scores(p, all_o, cfg.object_attn_temperature,
                                                 int(cfg.get("object_chunk", 256)))[:, None, :],
                                allowed.shape)
    elif query == "own":
        z = attention_pool(p, o, cfg.object_attn_temperature)
        sims = jnp.einsum("bke,je->bkj", z, all_o)
    else:
        raise ValueError(f"config.loss.object_query: unknown {query!r}; use 'candidate' or 'own'")
    logits = jnp.where(allowed, _tau(cfg, "object", out) * sims, NEG)
    return cross_entropy(logits, pos, valid)


def presence_term(out, batch, cfg, axis_name, rng):
    """Object level, multiple-instance: is word w shown anywhere in image i?

    s[i, j] = mean of the top `presence_topk` fraction of cos(p[i, n], o[j]) over
    patches n, for every valid unit j of the global batch; y[i, j] = 1 when unit j's
    word is among image i's own words. Loss: sigmoid cross-entropy of
    (s - presence_margin) / presence_temperature against y, each unit weighted by
    1 / (valid units with its word) so every distinct word counts once; mean over
    the batch's distinct words, per image. Words are independent (no softmax over
    them), so an image with several objects is not told that only one is there.
    """
    del rng
    o = l2_normalize(out["object_embed"])                   # [b, K, E]
    ids, valid = batch["object_ids"], batch["object_mask"]  # [b, K]
    b, e = ids.shape[0], o.shape[-1]
    all_o = gather(o, axis_name).reshape(-1, e)             # [J, E]
    all_ids = gather(ids, axis_name).reshape(-1)
    all_valid = gather(valid, axis_name).reshape(-1)
    c = _largest_divisor(all_o.shape[0], int(cfg.get("object_chunk", 256)))
    s = jax.lax.map(lambda uc: topk_pooled_scores(out["patch_embed"], uc, float(cfg.presence_topk)),
                    all_o.reshape(-1, c, e)).transpose(1, 0, 2).reshape(b, -1)             # [b, J]
    same_word = all_ids[:, None] == all_ids[None, :]
    copies = (same_word & all_valid[None, :]).sum(-1)
    weight = jnp.where(all_valid, 1.0 / jnp.maximum(copies, 1), 0.0)                    # [J]
    present = ((ids[:, :, None] == all_ids[None, None, :]) & valid[:, :, None]).any(1)  # [b, J]
    logits = _tau(cfg, "presence", out) * (s - float(cfg.presence_margin))
    bce = jax.nn.softplus(logits) - present * logits
    words = weight.sum()
    loss = (bce * weight[None, :]).sum() / jnp.maximum(words, 1.0) / b
    return loss, jnp.where(words > 0, float(b), 0.0)


def soft_kmeans(p, num_regions, iters, temperature):
    """Regions of patches p [b, N, E] (normalised): M centroids [b, M, E].

    Centroids start at M evenly spaced patches and follow `iters` soft k-means
    updates with assignment softmax_m(p.c_m / temperature).
    """
    start = jnp.linspace(0, p.shape[1] - 1, num_regions).round().astype(jnp.int32)
    c = p[:, start]
    for _ in range(iters):
        a = jax.nn.softmax(jnp.einsum("bne,bme->bnm", p, c) / temperature, axis=-1)
        c = l2_normalize(jnp.einsum("bnm,bne->bme", a, p))
    return c


def _largest_divisor(n, at_most):
    return max(d for d in range(1, min(n, max(at_most, 1)) + 1) if n % d == 0)


def region_term(out, batch, cfg, axis_name, rng):
    """Region level: fine-grained caption-to-region similarity, symmetric InfoNCE.

    S[i, j] = mean over word tokens t of caption j of max_m r[i,m].w[j,t].
    Each device scores all regions (gathered) against its local captions in
    chunks, giving the column block S[:, local]; an all_to_all turns it into
    the row block S[local, :] for the image-to-text direction.
    """
    del rng
    r = soft_kmeans(l2_normalize(out["patch_embed"]), cfg.region_num, cfg.region_iters,
                    cfg.region_assign_temperature)                    # [b, M, E]
    w = l2_normalize(out["token_embed"])                              # [b, L, E]
    wm = (batch["tokens"] > 3).astype(w.dtype)                        # words only (no bos/eos/pad)
    all_r = gather(r, axis_name)                                      # [B, M, E]
    b, big_b = r.shape[0], all_r.shape[0]
    chunk = _largest_divisor(big_b, cfg.region_chunk)

    def scores(rc):                                                   # [c, M, E] -> [c, b]
        s = jnp.einsum("cme,jle->cjml", rc, w).max(axis=2)
        return (s * wm).sum(-1) / jnp.maximum(wm.sum(-1), 1.0)

    cols = jax.lax.map(scores, all_r.reshape(big_b // chunk, chunk, *r.shape[1:]))
    cols = cols.reshape(big_b, b)                                     # S[all images, local captions]
    rows = cols.T if axis_name is None else jax.lax.all_to_all(
        cols, axis_name, split_axis=0, concat_axis=1, tiled=True)    # S[local images, all captions]
    labels = shard_offset(b, axis_name) + jnp.arange(b)
    scale = _tau(cfg, "region", out)
    i2t, n = cross_entropy(scale * rows, labels)
    t2i, _ = cross_entropy(scale * cols.T, labels)
    return 0.5 * (i2t + t2i), n


def pseudo_labels(p, o, valid, cfg):
    """Stop-gradient patch-to-word assignment and its confidence rule.

    Returns assign [b, N] (slot index k) and confident [b, N]: a patch is
    confident when its best score is among the top `pixel_top_fraction` of its image (rule "top_fraction") or above
    `pixel_threshold` (rule "threshold"), and its image has an object word.
    """
    sim = jax.lax.stop_gradient(jnp.einsum("bne,bke->bnk", p, o))
    sim = jnp.where(valid[:, None, :], sim, -jnp.inf)
    best, assign = sim.max(-1), sim.argmax(-1)
    has_obj = valid.any(-1, keepdims=True)
    if cfg.pixel_rule == "top_fraction":
        n_top = max(1, int(round(cfg.pixel_top_fraction * p.shape[1])))
        kth = jax.lax.top_k(best, n_top)[0][:, -1:]
        confident = best >= kth
    elif cfg.pixel_rule == "threshold":
        confident = best >= cfg.pixel_threshold
    else:
        raise ValueError(f"config.loss.pixel_rule: unknown rule {cfg.pixel_rule!r}")
    return assign, confident & has_obj


def _mine_top_k(query, keys, allowed, k, chunk):
    """Indices [.., k] of the k keys most similar to each query, among allowed.

    query [Q, E], keys [C, E], allowed [Q, C]; stop-gradient; done in chunks
    of keys (per-chunk top-k, then top-k of those) so memory is O(Q * (chunk + C/chunk * k)).
    """
    query, keys = jax.lax.stop_gradient(query), jax.lax.stop_gradient(keys)
    c = _largest_divisor(keys.shape[0], chunk)
    kk = min(k, c)

    def per_chunk(args):
        kc, ac = args
        return jax.lax.top_k(jnp.where(ac, query @ kc.T, -jnp.inf), kk)

    n_chunks = keys.shape[0] // c
    vals, idx = jax.lax.map(per_chunk, (keys.reshape(n_chunks, c, -1),
                                        allowed.reshape(allowed.shape[0], n_chunks, c).swapaxes(0, 1)))
    idx = idx + (jnp.arange(n_chunks) * c)[:, None, None]
    vals = vals.transpose(1, 0, 2).reshape(query.shape[0], -1)
    idx = idx.transpose(1, 0, 2).reshape(query.shape[0], -1)
    top_vals, pos = jax.lax.top_k(vals, min(k, vals.shape[1]))
    return jnp.take_along_axis(idx, pos, axis=1), top_vals > -jnp.inf


def _sample_anchors(eligible, rng, img, count):
    """Up to `count` eligible patches per image ([b, count] indices and validity):
    a Gumbel top-k drawn per global image index, so the choice ignores sharding."""
    n = eligible.shape[1]
    gumbel = jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(rng, i), (n,)))(img)
    _, idx = jax.lax.top_k(jnp.where(eligible, gumbel, -jnp.inf), count)
    return idx, jnp.take_along_axis(eligible, idx, axis=1)


def pixel_term(out, batch, cfg, axis_name, rng):
    """Pixel level: pseudo patch-word correspondences with hard negatives.

    (a) Anchor patches (up to `pixel_anchors` confident ones per image, sampled)
        vs their word unit; negatives: the `pixel_hard_k` most similar units of
        other images whose word differs (mined over the gathered units).
    (b) Each word unit vs the mean of its confident patches; negatives: the
        `pixel_hard_k` most similar patches of other images whose pseudo word
        differs, mined by passing patch blocks around the device ring.
    Mined negatives in (b) are constants (stop-gradient); see docs/method.md.
    """
    p = l2_normalize(out["patch_embed"])                       # [b, N, E]
    o = l2_normalize(out["object_embed"])                      # [b, K, E]
    ids, valid = batch["object_ids"], batch["object_mask"]
    b, n, e = p.shape
    k_slots = ids.shape[1]
    hard_k, scale = cfg.pixel_hard_k, _tau(cfg, "pixel", out)
    assign, confident = pseudo_labels(p, o, valid, cfg)
    word = jnp.take_along_axis(ids, assign, axis=1)            # pseudo word id per patch
    img = shard_offset(b, axis_name) + jnp.arange(b)           # global image index

    # (a) patch -> unit.
    n_anchor = min(cfg.pixel_anchors, n)
    anchor_idx, anchor_ok = _sample_anchors(confident, rng, img, n_anchor)  # [b, A]
    anchors = jnp.take_along_axis(p, anchor_idx[..., None], axis=1)         # [b, A, E]
    slot = jnp.take_along_axis(assign, anchor_idx, axis=1)
    positive = jnp.take_along_axis(o, slot[..., None], axis=1)              # [b, A, E]
    pos_word = jnp.take_along_axis(ids, slot, axis=1)
    all_o = gather(o, axis_name).reshape(-1, e)
    all_ids = gather(ids, axis_name).reshape(-1)
    all_img = jnp.repeat(gather(img, axis_name), k_slots)
    all_valid = gather(valid, axis_name).reshape(-1)
    q = anchors.reshape(-1, e)
    allowed = (all_valid[None] & (all_img[None] != jnp.repeat(img, n_anchor)[:, None])
               & (all_ids[None] != pos_word.reshape(-1)[:, None]))
    neg_idx, neg_ok = _mine_top_k(q, all_o, allowed, hard_k, cfg.pixel_chunk)
    negs = all_o[neg_idx]                                                    # [bA, k, E]
    logits_a = jnp.concatenate([
        (q * positive.reshape(-1, e)).sum(-1, keepdims=True),
        jnp.where(neg_ok, jnp.einsum("qe,qke->qk", q, negs), NEG / scale)], axis=1) * scale
    ce_a, n_a = cross_entropy(logits_a, jnp.zeros(q.shape[0], jnp.int32), anchor_ok.reshape(-1))

    # (b) unit -> patch.
    member = (confident[:, :, None] & (assign[:, :, None] == jnp.arange(k_slots)[None, None, :]))
    proto = l2_normalize(jnp.einsum("bnk,bne->bke", member.astype(p.dtype), p))  # [b, K, E]
    unit_ok = valid & member.any(1)
    units = o.reshape(-1, e)                                                # [bK, E]
    unit_word, unit_img = ids.reshape(-1), jnp.repeat(img, k_slots)
    best_v = jnp.full((b * k_slots, hard_k), -jnp.inf)
    best_e = jnp.zeros((b * k_slots, hard_k, e))
    block = (jax.lax.stop_gradient(p), word, img)
    size = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    for step in range(size):
        bp, bw, bi = block
        ok = ((unit_img[:, None] != jnp.repeat(bi, n)[None]) & (unit_word[:, None] != bw.reshape(-1)[None]))
        sims = jnp.where(ok, jax.lax.stop_gradient(units) @ bp.reshape(-1, e).T, -jnp.inf)
        best_v, top = jax.lax.top_k(jnp.concatenate([best_v, sims], axis=1), hard_k)
        kept = jnp.take_along_axis(best_e, jnp.minimum(top, hard_k - 1)[..., None], axis=1)
        fresh = bp.reshape(-1, e)[jnp.maximum(top - hard_k, 0)]
        best_e = jnp.where((top < hard_k)[..., None], kept, fresh)
        if step + 1 < size:
            perm = [(j, (j + 1) % size) for j in range(size)]
            block = jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, perm), block)
    logits_b = jnp.concatenate([
        (units * proto.reshape(-1, e)).sum(-1, keepdims=True),
        jnp.where(best_v > -jnp.inf, jnp.einsum("qe,qke->qk", units, best_e), NEG / scale)],
        axis=1) * scale
    ce_b, n_b = cross_entropy(logits_b, jnp.zeros(units.shape[0], jnp.int32), unit_ok.reshape(-1))
    count = n_a + n_b
    return (ce_a * n_a + ce_b * n_b) / jnp.maximum(count, 1.0), count


def background_term(out, batch, cfg, axis_name, rng):
    """Pixel level, against a constant background score (TCL's inference rule).

    Confident patches (the pixel term's pseudo labels) must score above the
    margin m with their word unit; pseudo-background patches (the bottom
    `background_fraction` of an image by best own-word score) must score below
    m with every unit of the global batch, via InfoNCE whose positive is the
    constant m and whose negatives are the `pixel_hard_k` most similar units.
    Up to `background_anchors` of each kind per image. See docs/method.md.
    """
    p = l2_normalize(out["patch_embed"])                       # [b, N, E]
    o = l2_normalize(out["object_embed"])                      # [b, K, E]
    valid = batch["object_mask"]
    b, n, e = p.shape
    scale, margin = _tau(cfg, "pixel", out), float(cfg.background_margin)
    assign, confident = pseudo_labels(p, o, valid, cfg)
    best = jax.lax.stop_gradient(
        jnp.where(valid[:, None, :], jnp.einsum("bne,bke->bnk", p, o), -jnp.inf).max(-1))  # [b, N]
    n_bg = max(1, int(round(cfg.background_fraction * n)))
    kth = -jax.lax.top_k(-best, n_bg)[0][:, -1:]
    background = (best <= kth) & valid.any(-1, keepdims=True) & ~confident
    img = shard_offset(b, axis_name) + jnp.arange(b)
    n_anchor = min(cfg.background_anchors, n)

    # Object anchors: cos(patch, its unit) above the margin.
    idx, ok_fg = _sample_anchors(confident, jax.random.fold_in(rng, 0), img, n_anchor)
    slot = jnp.take_along_axis(assign, idx, axis=1)
    pos = (jnp.take_along_axis(p, idx[..., None], axis=1)
           * jnp.take_along_axis(o, slot[..., None], axis=1)).sum(-1)            # [b, A]
    loss_fg = jax.nn.softplus(scale * (margin - pos))
    # Background anchors: the constant beats the hardest units of the batch.
    idx, ok_bg = _sample_anchors(background, jax.random.fold_in(rng, 1), img, n_anchor)
    q = jnp.take_along_axis(p, idx[..., None], axis=1).reshape(-1, e)           # [bA, E]
    all_o = gather(o, axis_name).reshape(-1, e)
    all_valid = gather(valid, axis_name).reshape(-1)
    neg_idx, neg_ok = _mine_top_k(q, all_o, jnp.broadcast_to(all_valid[None], (q.shape[0], all_valid.size)),
                                  cfg.pixel_hard_k, cfg.pixel_chunk)
    sims = jnp.where(neg_ok, jnp.einsum("qe,qke->qk", q, all_o[neg_idx]), NEG / scale)
    logits = jnp.concatenate([jnp.full((q.shape[0], 1), margin), sims], axis=1) * scale
    loss_bg = jax.nn.logsumexp(logits, axis=1) - logits[:, 0]
    w_fg, w_bg = ok_fg.reshape(-1).astype(p.dtype), ok_bg.reshape(-1).astype(p.dtype)
    count = w_fg.sum() + w_bg.sum()
    total = (loss_fg.reshape(-1) * w_fg).sum() + (loss_bg * w_bg).sum()
    return total / jnp.maximum(count, 1.0), count


TERMS: dict[str, Callable] = {
    "image_text": image_text_term,
    "object": object_term,
    "presence": presence_term,
    "region": region_term,
    "pixel": pixel_term,
    "background": background_term,
}
NEEDS_OBJECTS = {"object", "presence", "pixel", "background"}  # terms that use object_embed


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
    scalar). Terms draw randomness per global example index, so the result
    does not depend on how the batch is split over devices.
    Returns (total, {name: value}).
    """
    weights = active_terms(loss_cfg)
    batch_keys = [k for k in ("tokens", "object_ids", "object_mask") if k in batch]
    local_batch = {k: batch[k] for k in batch_keys}
    out = {k: v for k, v in out.items() if k != "grid"}
    specs_out = {k: (P() if jnp.ndim(v) == 0 else P(DATA)) for k, v in out.items()}
    specs_batch = {k: P(DATA) for k in local_batch}

    def per_device(out, local_batch, rng):
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
