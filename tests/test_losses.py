"""Training objective (mgca_jax/losses.py) against independent references.

Every term is re-derived here from its definition, in float64 NumPy, without
the sharded machinery (no gathers, no chunking, no ring): plain loops and
sorts over the global batch.  `total_loss` is then compared with it on a
1-device and an 8-device mesh (conftest.py forces 8 host CPU devices).

The same reference code also runs on jax.numpy (float32), which gives an
independent gradient: for the pixel term its discrete choices (pseudo labels,
confidence, anchors, mined negatives) are fixed NumPy constants and only the
continuous part is differentiated, with the (b) negative patches wrapped in
stop_gradient.  Matching `jax.grad(total_loss)` against it checks every
stop-gradient rule of the term at once.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import base_config, multi_grained_loss
from mgca_jax import losses
from mgca_jax.sharding import make_mesh

EPS = 1e-6
RTOL, ATOL = 1e-5, 1e-5          # float32 loss vs float64 reference
GRAD_RTOL, GRAD_ATOL = 2e-4, 2e-6  # float32 vs float32, different summation orders
TERM_NAMES = ("image_text", "object", "presence", "region", "pixel", "background")


# --------------------------------------------------------------------------- set-up

@pytest.fixture(scope="module")
def meshes():
    devs = jax.devices()
    assert len(devs) >= 8, "conftest.py should force 8 host devices"
    return {n: make_mesh(devs[:n]) for n in (1, 2, 8)}


def loss_cfg(weights=None, **overrides):
    c = base_config()
    if weights is None:
        multi_grained_loss(c, background=1.0)
    else:
        c.loss.weights = dict(weights)
    for k, v in overrides.items():
        setattr(c.loss, k, v)
    return c.loss


def only(term, **overrides):
    return loss_cfg({t: (1.0 if t == term else 0.0) for t in TERM_NAMES}, **overrides)


def make_data(seed, B=8, N=16, K=3, E=8, L=6, vocab=4, p_valid=0.7, logit_scale=10.0):
    """Random inputs with same-word collisions, padded slots, an image without
    any object word (image 1) and a caption without word tokens (caption B-1)."""
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)
    out = dict(patch_embed=f(B, N, E), image_embed=f(B, E), token_embed=f(B, L, E),
               text_embed=f(B, E), object_embed=f(B, K, E),
               logit_scale=np.float32(logit_scale))
    tokens = r.integers(0, 12, size=(B, L)).astype(np.int32)
    tokens[:, 0] = 2
    tokens[-1] = [2, 3] + [0] * (L - 2)
    mask = r.random((B, K)) < p_valid
    mask[0] = True
    mask[1] = False
    ids = r.integers(4, 4 + vocab, size=(B, K)).astype(np.int32)
    ids[~mask] = -1
    batch = dict(tokens=tokens, object_ids=ids, object_mask=mask)
    return out, batch


_JIT_CACHE = {}


def run_loss(out, batch, cfg, mesh, rng=None, grad=False):
    """total_loss (jitted) -> (total, values) or ((total, values), grads)."""
    rng = jax.random.key(0) if rng is None else rng
    key = (id(cfg), id(mesh), grad)
    if key not in _JIT_CACHE:
        f = lambda o, b, k: losses.total_loss(o, b, cfg, mesh, k)
        _JIT_CACHE[key] = (cfg, jax.jit(jax.value_and_grad(f, has_aux=True) if grad else f))
    res = _JIT_CACHE[key][1](out, batch, rng)
    return jax.tree.map(np.asarray, res)


# --------------------------------------------------------------------------- references
# Written against numpy (`xp=np`, float64) for values and reused with
# `xp=jnp` (float32) for gradients.  Discrete choices always come from NumPy.

def nrm(x, xp):
    return x / xp.sqrt((x * x).sum(-1, keepdims=True) + EPS)


def softmax(x, xp, axis=-1):
    e = xp.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def ce_rows(logits, labels, xp):
    """Per-row -log softmax(logits)[label]; -inf logits are excluded candidates."""
    m = logits.max(-1, keepdims=True)
    lse = (m + xp.log(xp.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
    return lse - logits[np.arange(len(labels)), labels]


def as_xp(out, xp):
    if xp is np:
        return {k: np.asarray(v, np.float64) for k, v in out.items()}
    return out


def scale_of(cfg, name, out):
    t = float(cfg.get(f"{name}_temperature", 0.0))
    return out["logit_scale"] if t <= 0 else 1.0 / t


def ref_image_text(out, batch, cfg, xp=np):
    out = as_xp(out, xp)
    txt = nrm(out["text_embed"], xp)
    s, d = out["logit_scale"], np.arange(txt.shape[0])
    if cfg.get("image_text_pool", "mean") == "topk":
        # sim[i, j] = mean of the k largest cos(patch of image i, caption j), by a full sort
        p = nrm(out["patch_embed"], xp)
        N = p.shape[1]
        k = int(np.ceil(cfg.image_text_topk * N))
        cos = xp.einsum("ine,je->ijn", p, txt)
        fixed = cos if xp is np else jax.lax.stop_gradient(cos)   # the choice carries no gradient
        order = xp.argsort(-fixed, axis=-1)[..., :k]
        sim = xp.take_along_axis(cos, order, axis=-1).mean(-1)
        return 0.5 * (ce_rows(s * sim, d, xp).mean() + ce_rows(s * sim.T, d, xp).mean())
    img = nrm(out["image_embed"], xp)
    return 0.5 * (ce_rows(s * img @ txt.T, d, xp).mean() + ce_rows(s * txt @ img.T, d, xp).mean())


def ref_object(out, batch, cfg, xp=np):
    out = as_xp(out, xp)
    p, o = nrm(out["patch_embed"], xp), nrm(out["object_embed"], xp)
    ids, mask = batch["object_ids"], batch["object_mask"]
    B, K = ids.shape
    scale = scale_of(cfg, "object", out)
    units = o.reshape(B * K, -1)
    ids_f, mask_f = ids.reshape(-1), mask.reshape(-1)
    allowed = np.eye(B * K, dtype=bool) | (mask_f[None] & (ids_f[None] != ids_f[:, None]))
    if cfg.get("object_query", "own") == "own":
        att = softmax(xp.einsum("bne,bke->bkn", p, o) / cfg.object_attn_temperature, xp)
        z = nrm(xp.einsum("bkn,bne->bke", att, p), xp).reshape(B * K, -1)  # row (i, k)
        sims = z @ units.T
    else:   # candidate unit j pools image i with its own query, one loop per pair
        def score(i, j):
            a = softmax(p[i] @ units[j] / cfg.object_attn_temperature, xp)
            return nrm(a @ p[i], xp) @ units[j]
        sims = xp.stack([xp.stack([score(i, j) for j in range(B * K)]) for i in range(B)])
        sims = xp.repeat(sims, K, axis=0)                                  # row (i, k) = image i
    logits = xp.where(allowed, scale * sims, -xp.inf)
    rows = np.flatnonzero(mask_f)                                            # valid anchors
    return ce_rows(logits[rows], rows, xp).mean()


def ref_presence(out, batch, cfg, xp=np, fixed=None):
    """Per image, per distinct valid word of the batch: sigmoid cross-entropy of
    (mean of the word's top-k patch cosines - margin) / T, present = in the image's words.
    The top-k choice is made on NumPy values (`fixed`, default `out`): it carries no gradient."""
    fixed = as_xp(out if fixed is None else fixed, np)
    fp, fo = nrm(fixed["patch_embed"], np), nrm(fixed["object_embed"], np)
    out = as_xp(out, xp)
    p, o = nrm(out["patch_embed"], xp), nrm(out["object_embed"], xp)
    ids, mask = batch["object_ids"], batch["object_mask"]
    B, N = p.shape[:2]
    k = int(np.ceil(cfg.presence_topk * N))
    scale = scale_of(cfg, "presence", out)
    words = sorted(set(ids[mask].tolist()))
    total = 0.0
    for i in range(B):
        for w in words:
            # every unit of word w (identical or not) counts 1 / copies
            units = [(j, kk) for j in range(B) for kk in range(ids.shape[1]) if mask[j, kk] and ids[j, kk] == w]
            y = float(w in ids[i][mask[i]].tolist())
            for j, kk in units:
                cos = p[i] @ o[j, kk]
                s = cos[np.argsort(-(fp[i] @ fo[j, kk]))[:k]].mean()
                z = scale * (s - cfg.presence_margin)
                # log(1 + e^z) - y z, written stably
                bce = xp.maximum(z, 0) + xp.log1p(xp.exp(-xp.abs(z))) - y * z
                total = total + bce / len(units)
    return total / (B * max(len(words), 1))


def ref_regions(p, cfg, xp):
    N = p.shape[1]
    start = np.round(np.linspace(0, N - 1, cfg.region_num)).astype(int)
    c = p[:, start]
    for _ in range(cfg.region_iters):
        a = softmax(xp.einsum("bne,bme->bnm", p, c) / cfg.region_assign_temperature, xp)
        c = nrm(xp.einsum("bnm,bne->bme", a, p), xp)
    return c


def ref_region_similarity(out, batch, cfg, xp=np):
    out = as_xp(out, xp)
    r = ref_regions(nrm(out["patch_embed"], xp), cfg, xp)                      # [B, M, E]
    w = nrm(out["token_embed"], xp)
    B = r.shape[0]
    cols = []
    for j in range(B):
        words = np.flatnonzero(batch["tokens"][j] > 3)
        if len(words) == 0:
            cols.append(xp.zeros(B, r.dtype))
        else:
            cols.append(xp.einsum("ime,te->imt", r, w[j, words]).max(1).mean(-1))
    return xp.stack(cols, axis=1), out                                         # S[image, caption]


def ref_region(out, batch, cfg, xp=np):
    S, o = ref_region_similarity(out, batch, cfg, xp)
    s, d = scale_of(cfg, "region", o), np.arange(S.shape[0])
    return 0.5 * (ce_rows(s * S, d, xp).mean() + ce_rows(s * S.T, d, xp).mean())


def pixel_selection(out, batch, cfg, anchors=None):
    """Discrete part of the pixel term, float64: pseudo labels, confidence,
    anchors (default: every confident patch), mined negatives."""
    p = nrm(np.asarray(out["patch_embed"], np.float64), np)
    o = nrm(np.asarray(out["object_embed"], np.float64), np)
    ids, mask = batch["object_ids"], batch["object_mask"]
    B, N, _ = p.shape
    K = ids.shape[1]
    hk = cfg.pixel_hard_k
    sim = np.where(mask[:, None, :], np.einsum("bne,bke->bnk", p, o), -np.inf)
    best, assign = sim.max(-1), sim.argmax(-1)
    if cfg.pixel_rule == "top_fraction":
        t = max(1, int(round(cfg.pixel_top_fraction * N)))
        kth = -np.sort(-best, axis=1)[:, t - 1]
        conf = best >= kth[:, None]
    else:
        conf = best >= cfg.pixel_threshold
    conf &= mask.any(-1)[:, None]
    word = np.take_along_axis(ids, assign, axis=1)
    if anchors is None:
        anchors = {i: list(np.flatnonzero(conf[i])) for i in range(B)}
    sel_a = []
    for i in range(B):
        for n in anchors[i]:
            assert conf[i, n]
            k = assign[i, n]
            cands = [(j, l) for j in range(B) if j != i for l in range(K)
                     if mask[j, l] and ids[j, l] != ids[i, k]]
            sims = np.array([p[i, n] @ o[j, l] for j, l in cands])
            sel_a.append((i, n, k, [cands[t] for t in np.argsort(-sims, kind="stable")[:hk]]))
    sel_b = []
    for i in range(B):
        for k in range(K):
            members = [n for n in range(N) if conf[i, n] and assign[i, n] == k]
            if not mask[i, k] or not members:
                continue
            cands = [(j, m) for j in range(B) if j != i for m in range(N) if word[j, m] != ids[i, k]]
            sims = np.array([o[i, k] @ p[j, m] for j, m in cands])
            sel_b.append((i, k, members, [cands[t] for t in np.argsort(-sims, kind="stable")[:hk]]))
    return dict(a=sel_a, b=sel_b, conf=conf, assign=assign, word=word)


def _neg_logits(q, keys, idx, xp, sg=lambda x: x):
    """[Q, hk] similarities of q [Q, E] to keys[idx] (idx [Q, hk, 2], -1 pads) with -inf pads."""
    ok = idx[..., 0] >= 0
    safe = np.where(ok[..., None], idx, 0)
    negs = sg(keys[safe[..., 0], safe[..., 1]])                                  # [Q, hk, E]
    return xp.where(ok, xp.einsum("qe,qke->qk", q, negs), -xp.inf)


def _pad(lists, hk):
    out = -np.ones((len(lists), max(hk, 1), 2), int)
    for r, lst in enumerate(lists):
        if lst:
            out[r, :len(lst)] = np.array(lst)
    return out


def ref_pixel(out, batch, cfg, xp=np, sel=None):
    """Pixel term value given (or computing) the selection; differentiable in xp=jnp."""
    sel = pixel_selection(out, batch, cfg) if sel is None else sel
    out = as_xp(out, xp)
    sg = jax.lax.stop_gradient if xp is jnp else (lambda x: x)
    p, o = nrm(out["patch_embed"], xp), nrm(out["object_embed"], xp)
    scale = scale_of(cfg, "pixel", out)
    hk = cfg.pixel_hard_k
    parts = []
    if sel["a"]:
        ai, an, ak, negs = (np.array([s[0] for s in sel["a"]]), np.array([s[1] for s in sel["a"]]),
                            np.array([s[2] for s in sel["a"]]), _pad([s[3] for s in sel["a"]], hk))
        q = p[ai, an]
        lg = xp.concatenate([(q * o[ai, ak]).sum(-1, keepdims=True), _neg_logits(q, o, negs, xp)], 1)
        parts.append(ce_rows(scale * lg, np.zeros(len(ai), int), xp))
    if sel["b"]:
        B, N = p.shape[:2]
        ui, uk = np.array([s[0] for s in sel["b"]]), np.array([s[1] for s in sel["b"]])
        member = np.zeros((len(ui), B, N))
        for r, s in enumerate(sel["b"]):
            member[r, s[0], s[2]] = 1.0
        u = o[ui, uk]
        proto = nrm(xp.einsum("ubn,bne->ue", member, p), xp)
        negs = _pad([s[3] for s in sel["b"]], hk)
        lg = xp.concatenate([(u * proto).sum(-1, keepdims=True), _neg_logits(u, p, negs, xp, sg)], 1)
        parts.append(ce_rows(scale * lg, np.zeros(len(ui), int), xp))
    if not parts:
        return xp.zeros(())
    return xp.concatenate(parts).mean()


def ref_background(out, batch, cfg, xp=np, fixed=None):
    """Every confident patch: softplus(s * (m - cos(patch, its unit))); every pseudo-background
    patch (bottom fraction by best own-word cosine, not confident): -log softmax over
    [m, its hard_k most similar valid units of the batch] at m. Mean over both kinds."""
    fixed = out if fixed is None else fixed       # NumPy inputs of the discrete choices
    sel = pixel_selection(fixed, batch, cfg, anchors={i: [] for i in range(len(batch["object_ids"]))})
    out_x = as_xp(out, xp)
    p, o = nrm(out_x["patch_embed"], xp), nrm(out_x["object_embed"], xp)
    p64 = nrm(np.asarray(fixed["patch_embed"], np.float64), np)
    o64 = nrm(np.asarray(fixed["object_embed"], np.float64), np)
    ids, mask = batch["object_ids"], batch["object_mask"]
    B, N, _ = p64.shape
    s, m = scale_of(cfg, "pixel", out_x), cfg.background_margin
    terms = []
    units = [(j, l) for j in range(B) for l in range(ids.shape[1]) if mask[j, l]]
    for i in range(B):
        if not mask[i].any():
            continue
        best = np.array([max(p64[i, n] @ o64[i, l] for l in range(ids.shape[1]) if mask[i, l])
                         for n in range(N)])
        cut = np.sort(best)[max(1, int(round(cfg.background_fraction * N))) - 1]
        for n in range(N):
            if sel["conf"][i, n]:
                k = sel["assign"][i, n]
                z = s * (m - (p[i, n] * o[i, k]).sum())
                terms.append(xp.logaddexp(0.0, z))
            elif best[n] <= cut:
                sims = np.array([p64[i, n] @ o64[j, l] for j, l in units])
                top = [units[t] for t in np.argsort(-sims, kind="stable")[:cfg.pixel_hard_k]]
                logits = [s * m] + [s * (p[i, n] * o[j, l]).sum() for j, l in top]
                logits = xp.stack([xp.asarray(v) for v in logits])
                mx = logits.max()
                terms.append(mx + xp.log(xp.exp(logits - mx).sum()) - logits[0])
    return xp.stack(terms).mean()


REFS = dict(image_text=ref_image_text, object=ref_object, presence=ref_presence, region=ref_region,
            pixel=ref_pixel, background=ref_background)


# --------------------------------------------------------------------------- values

TERM_CASES = [
    ("image_text", {}, dict(N=9)),
    ("image_text", dict(image_text_pool="topk", image_text_topk=0.25), dict(N=9, seed=7)),
    ("image_text", dict(image_text_pool="topk", image_text_topk=1.0), dict(N=16, seed=8)),
    ("object", {}, dict(N=9)),
    ("object", dict(object_temperature=0.0, object_attn_temperature=0.2), dict(N=9, seed=3)),
    ("object", dict(object_query="candidate"), dict(N=9)),
    ("object", dict(object_query="candidate", object_chunk=3, object_temperature=0.0), dict(N=9, seed=5)),
    ("presence", {}, dict(N=16)),
    ("presence", dict(presence_topk=0.25, presence_margin=0.1, presence_temperature=0.0,
                      object_chunk=3), dict(N=9, seed=11)),
    ("presence", dict(presence_topk=1.0, presence_temperature=0.5), dict(N=9, seed=12, vocab=2)),
    ("region", dict(region_num=4, region_iters=2, region_chunk=64), dict(N=9)),
    ("region", dict(region_num=5, region_iters=3, region_chunk=3, region_temperature=0.1),
     dict(N=16, seed=4)),
    # anchors >= N: the anchor set is every confident patch (no RNG in the reference)
    ("pixel", dict(pixel_anchors=32, pixel_hard_k=3), dict(N=16)),
    ("background", dict(background_anchors=32, pixel_hard_k=3, pixel_chunk=4), dict(N=16, seed=9)),
    ("background", dict(background_anchors=9, pixel_hard_k=5, pixel_rule="threshold",
                        pixel_threshold=0.3, background_fraction=0.7, background_margin=0.1,
                        pixel_temperature=0.0), dict(N=9, seed=10)),
    ("pixel", dict(pixel_anchors=16, pixel_hard_k=5, pixel_chunk=4, pixel_top_fraction=0.3),
     dict(N=16, seed=5)),
    ("pixel", dict(pixel_anchors=9, pixel_hard_k=4, pixel_rule="threshold", pixel_threshold=0.2,
                   pixel_temperature=0.0), dict(N=9, seed=6)),
]


@pytest.mark.parametrize("term,overrides,data", TERM_CASES,
                         ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(TERM_CASES)])
@pytest.mark.parametrize("devices", [1, 8])
def test_term_matches_reference(term, overrides, data, devices, meshes):
    data = dict(data)
    out, batch = make_data(data.pop("seed", 0), **data)
    cfg = only(term, **overrides)
    expected = REFS[term](out, batch, cfg)
    total, values = run_loss(out, batch, cfg, meshes[devices])
    assert set(values) == {term}
    np.testing.assert_allclose(values[term], expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(total, expected, rtol=RTOL, atol=ATOL)


def test_reference_cases_are_not_degenerate():
    """The random data exercise what they are meant to: word collisions, padded slots, an
    image without object words, enough anchors and units."""
    out, batch = make_data(0, N=16)
    ids, mask = batch["object_ids"], batch["object_mask"]
    valid_ids = ids[mask]
    assert len(valid_ids) > len(set(valid_ids.tolist()))        # same-word units across images
    assert (~mask).sum() > 3 and not mask[1].any()
    sel = pixel_selection(out, batch, only("pixel", pixel_hard_k=3))
    assert len(sel["a"]) > 8 and len(sel["b"]) > 4
    assert not sel["conf"][1].any()


# --------------------------------------------------------------------------- hand cases

@pytest.mark.parametrize("devices", [1, 2])
def test_presence_hand_case(devices, meshes):
    """Two images, two words, k = 1 of 2 patches, margin 0.5, T = 1. Image 0 shows both
    shapes but names word 5; image 1 shows only word 6 and names it. Logits
    s - 0.5: image 0 (+0.5, +0.5), image 1 (-0.5, +0.5); labels (1, 0), (0, 1).
    Mean BCE = (3 log(1 + e^-0.5) + log(1 + e^0.5)) / 4. A duplicate unit of word 6
    (image 1, slot 1) changes nothing: each distinct word counts once."""
    p = np.array([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], np.float32)
    o = np.array([[[1, 0], [0, 0]], [[0, 1], [0, 1]]], np.float32)
    out = dict(patch_embed=p, object_embed=o, logit_scale=np.float32(10.0))
    cfg = only("presence", presence_topk=0.5, presence_margin=0.5, presence_temperature=1.0)
    expected = (3 * np.log1p(np.exp(-0.5)) + np.log1p(np.exp(0.5))) / 4
    for ids, mask in ((np.array([[5, -1], [6, -1]]), np.array([[1, 0], [1, 0]], bool)),
                      (np.array([[5, -1], [6, 6]]), np.array([[1, 0], [1, 1]], bool))):
        batch = dict(object_ids=ids.astype(np.int32), object_mask=mask)
        _, values = run_loss(out, batch, cfg, meshes[devices])
        np.testing.assert_allclose(values["presence"], expected, rtol=1e-6)
        np.testing.assert_allclose(ref_presence(out, batch, cfg), expected, rtol=1e-6)  # EPS in the norm


@pytest.mark.parametrize("devices", [1, 8])
def test_object_every_other_unit_same_word_is_zero(devices, meshes):
    out, batch = make_data(1, N=9)
    ids = np.full_like(batch["object_ids"], 7)
    mask = np.ones_like(batch["object_mask"])
    mask[2, 1] = False
    ids[2, 1] = 9      # a padded slot with a different word is still not a negative
    batch = dict(batch, object_ids=ids, object_mask=mask)
    total, values = run_loss(out, batch, only("object"), meshes[devices])
    # Mathematically exactly 0 (softmax over the positive alone). XLA may evaluate the
    # positive's logit twice (once for the max, once for the label) with different float32
    # rounding, so allow one ulp-level residue per anchor.
    assert abs(values["object"]) < 1e-6 and abs(total) < 1e-6


@pytest.mark.parametrize("devices", [2])
def test_pixel_hand_case_fewer_candidates_than_k(devices, meshes):
    """B=2, N=2, K=2, E=4 on basis vectors; threshold rule; hard_k=8 > candidates.

    image 0: units e0 (word 10), e1 (word 11); patches e0 (conf, ->slot 0), e2 (best 0, not conf, word 10)
    image 1: units e2 (word 12), pad;          patches e2 (conf, ->slot 0), e3 (best 0, not conf, word 12)
    (a) anchor (0,0): pos e0.e0=1; negs: unit (1,0) only              -> log(1 + e^-s)
        anchor (1,0): pos 1; negs: units (0,0), (0,1), sims 0, 0     -> log(1 + 2e^-s)
    (b) unit (0,0): proto e0, pos 1; negs: patches of image 1 (word 12 != 10): sims 0, 0 -> log(1 + 2e^-s)
        unit (0,1): no confident patch -> not counted
        unit (1,0): proto e2, pos 1; negs: patches of image 0 (word 10): e0 (0), e2 (1)  -> log(2 + e^-s)
    """
    e = np.eye(4, dtype=np.float32)
    out = dict(patch_embed=np.stack([[e[0], e[2]], [e[2], e[3]]]),
               object_embed=np.stack([[e[0], e[1]], [e[2], e[3]]]),
               image_embed=np.ones((2, 4), np.float32), text_embed=np.ones((2, 4), np.float32),
               token_embed=np.ones((2, 3, 4), np.float32), logit_scale=np.float32(1.0))
    batch = dict(tokens=np.full((2, 3), 5, np.int32),
                 object_ids=np.array([[10, 11], [12, -1]], np.int32),
                 object_mask=np.array([[True, True], [True, False]]))
    cfg = only("pixel", pixel_rule="threshold", pixel_threshold=0.5, pixel_hard_k=8,
               pixel_anchors=2, pixel_temperature=0.5)
    s = 2.0 / (1.0 + EPS)    # 1/temperature times the dot of two eps-normalised unit vectors
    expected = (np.log1p(np.exp(-s)) + 2 * np.log1p(2 * np.exp(-s)) + np.log(2 + np.exp(-s))) / 4
    _, values = run_loss(out, batch, cfg, meshes[devices])
    np.testing.assert_allclose(values["pixel"], expected, rtol=1e-6)
    np.testing.assert_allclose(ref_pixel(out, batch, cfg), expected, rtol=1e-9)


def test_pixel_no_candidates_gives_zero(meshes):
    """Every valid unit has the same word and every image has one: (a) and (b) have no
    negatives, so each CE is 0.  (Patches of an image *without* object words carry the pad
    word -1 and would be (b) negatives; see test_reference_cases_are_not_degenerate.)"""
    out, batch = make_data(2, N=9)
    mask = batch["object_mask"].copy()
    mask[:, 0] = True
    batch = dict(batch, object_mask=mask, object_ids=np.where(mask, 5, -1).astype(np.int32))
    _, values = run_loss(out, batch, only("pixel", pixel_anchors=9, pixel_hard_k=4), meshes[8])
    assert abs(values["pixel"]) < 1e-6     # exactly 0 up to float32 rounding, as above


@pytest.mark.parametrize("devices", [8])
def test_region_captions_without_words_score_zero(devices, meshes):
    """Only special tokens (pad/unk/bos/eos) in every caption: S = 0, so both directions
    are uniform over the B candidates and the term is log B whatever the regions."""
    out, batch = make_data(3, N=9)
    batch = dict(batch, tokens=np.tile(np.array([2, 1, 3, 0, 0, 0], np.int32), (8, 1)))
    _, values = run_loss(out, batch, only("region", region_num=4), meshes[devices])
    np.testing.assert_allclose(values["region"], np.log(8.0), rtol=1e-6)


# --------------------------------------------------------------------------- gradients

GRAD_CASES = [
    ("image_text", {}),
    ("image_text_topk", dict(image_text_pool="topk", image_text_topk=0.2)),
    ("object", dict(object_temperature=0.0)),
    ("presence", dict(presence_topk=0.2, presence_temperature=0.0, object_chunk=4)),
    ("region", dict(region_num=4, region_iters=2, region_chunk=3)),
    ("pixel", dict(pixel_anchors=16, pixel_hard_k=4, pixel_chunk=4, pixel_temperature=0.0)),
    ("background", dict(background_anchors=16, pixel_hard_k=3, pixel_chunk=4, pixel_temperature=0.0)),
]


@pytest.mark.parametrize("term,overrides", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradient_matches_reference(term, overrides, meshes):
    """jax.grad(total_loss) on 8 devices == jax.grad of the float32 reference
    (for pixel: discrete choices fixed, (b) negatives stop-gradient)."""
    out, batch = make_data(21, N=16)
    term, pool = term.partition("_topk")[:2]
    cfg = only(term, **overrides)
    (_, _), grads = run_loss(out, batch, cfg, meshes[8], grad=True)
    for v in grads.values():
        assert np.all(np.isfinite(v))
    if term == "pixel":
        sel = pixel_selection(out, batch, cfg)
        ref = lambda o: ref_pixel(o, batch, cfg, jnp, sel)
    elif term == "background":
        ref = lambda o: ref_background(o, batch, cfg, jnp, fixed=out)
    elif term == "presence":
        ref = lambda o: ref_presence(o, batch, cfg, jnp, fixed=out)
    else:
        ref = lambda o: REFS[term](o, batch, cfg, jnp)
    with jax.default_device(jax.devices()[0]):
        ref_grads = jax.jit(jax.grad(ref))({k: jnp.asarray(v) for k, v in out.items()})
    for k in out:
        np.testing.assert_allclose(grads[k], np.asarray(ref_grads[k]), rtol=GRAD_RTOL,
                                   atol=GRAD_ATOL, err_msg=k)
    touched = {"image_text": (["patch_embed"] if pool else ["image_embed"]) + ["text_embed", "logit_scale"],
               "object": ["patch_embed", "object_embed", "logit_scale"],
               "presence": ["patch_embed", "object_embed", "logit_scale"],
               "region": ["patch_embed", "token_embed", "logit_scale"],
               "pixel": ["patch_embed", "object_embed", "logit_scale"],
               "background": ["patch_embed", "object_embed", "logit_scale"]}[term]
    for k in out:
        assert np.any(grads[k] != 0) == (k in touched), k


def test_pixel_stop_gradients(meshes):
    """Pixel term alone, hard_k large enough that every eligible candidate is mined.

    - non-confident patches are only ever (b) negatives or pseudo-label inputs: gradient exactly 0;
    - padded object slots: gradient exactly 0;
    - a valid unit that is neither an (a) positive nor a (b) unit gets gradient only as a mined
      (a) negative: it must be non-zero (negative units keep gradients).
    """
    out, batch = make_data(23, N=16)
    cfg = only("pixel", pixel_anchors=16, pixel_hard_k=128)
    sel = pixel_selection(out, batch, cfg)
    (_, values), grads = run_loss(out, batch, cfg, meshes[8], grad=True)
    # hard_k = 128 exceeds every candidate set (at most 7 * 16 patches): value still matches
    assert max(len(s[3]) for s in sel["a"] + sel["b"]) < cfg.pixel_hard_k
    np.testing.assert_allclose(values["pixel"], ref_pixel(out, batch, cfg, sel=sel), rtol=RTOL, atol=ATOL)
    gp, go = grads["patch_embed"], grads["object_embed"]
    conf = sel["conf"]
    b_negs = {pm for s in sel["b"] for pm in s[3]}
    assert any(not conf[j, m] for j, m in b_negs), "some non-confident patch must be a mined negative"
    assert np.all(gp[~conf] == 0.0)
    assert np.all(np.abs(gp[conf]).sum(-1) > 0)
    assert np.all(go[~batch["object_mask"]] == 0.0)
    positives = {(s[0], s[2]) for s in sel["a"]} | {(s[0], s[1]) for s in sel["b"]}
    a_negs = {u for s in sel["a"] for u in s[3]}
    only_neg = [u for u in a_negs if u not in positives]
    assert only_neg, "case should have a unit used only as an (a) negative"
    for j, l in only_neg:
        assert np.abs(go[j, l]).sum() > 0


def test_pixel_no_gradient_through_pseudo_labels(meshes):
    """A valid unit that takes part only in pseudo-labelling (it competes in the argmax of
    its image's patches but has no confident patch and is never mined) gets exactly zero
    gradient, and nudging it (without changing any discrete choice) leaves the loss as is."""
    out, batch = make_data(46, N=16)
    cfg = only("pixel", pixel_anchors=16, pixel_hard_k=1)
    sel = pixel_selection(out, batch, cfg)
    positives = {(s[0], s[2]) for s in sel["a"]} | {(s[0], s[1]) for s in sel["b"]}
    a_negs = {u for s in sel["a"] for u in s[3]}
    mask = batch["object_mask"]
    idle = [(i, k) for i, k in zip(*np.nonzero(mask)) if (i, k) not in positives | a_negs]
    assert idle, "case should have a unit used only by the pseudo-labelling"
    (v1, values), g1 = run_loss(out, batch, cfg, meshes[8], grad=True)
    np.testing.assert_allclose(values["pixel"], ref_pixel(out, batch, cfg, sel=sel), rtol=RTOL, atol=ATOL)
    for i, k in idle:
        assert np.all(g1["object_embed"][i, k] == 0.0)
    out2 = dict(out, object_embed=out["object_embed"].copy())
    i, k = idle[0]
    out2["object_embed"][i, k] *= 1.01
    out2["object_embed"][i, k, 0] += 0.01
    sel2 = pixel_selection(out2, batch, cfg)
    assert (sel2["a"], sel2["b"]) == (sel["a"], sel["b"])
    assert np.array_equal(sel2["assign"], sel["assign"]) and np.array_equal(sel2["conf"], sel["conf"])
    (v2, _), _ = run_loss(out2, batch, cfg, meshes[8], grad=True)
    assert v2 == v1


def test_zero_weight_term_is_not_computed(meshes, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a zero-weight term was computed")

    out, batch = make_data(0, N=9)
    monkeypatch.setitem(losses.TERMS, "region", boom)
    # a fresh jit per call: the (patched) TERMS table is read at trace time
    call = lambda cfg: jax.jit(lambda o, b, k: losses.total_loss(o, b, cfg, meshes[8], k))(
        out, batch, jax.random.key(0))
    cfg = loss_cfg(dict(image_text=1.0, object=1.0, region=0.0, pixel=1.0), pixel_anchors=9)
    total, values = call(cfg)
    assert set(values) == {"image_text", "object", "pixel"} and np.isfinite(total)
    with pytest.raises(AssertionError, match="zero-weight"):
        call(loss_cfg(pixel_anchors=9))
    assert not losses.needs_objects(loss_cfg(dict(image_text=1.0, object=0.0, region=1.0, pixel=0.0)))
    with pytest.raises(ValueError, match="unknown term"):
        losses.active_terms(loss_cfg(dict(image_text=1.0, bogus=1.0)))


# --------------------------------------------------------------------------- sharding

# Full objective, learnable object scale, 2 sampled anchors out of 4 confident patches per
# image, chunked mining (24 units in chunks of 4) and regions scored 2 images at a time
# (largest divisor of the global batch <= 3); non-unit weights.
FULL_WEIGHTS = dict(image_text=0.5, object=2.0, presence=0.6, region=0.25, pixel=1.5, background=0.75)
FULL_CFG = loss_cfg(FULL_WEIGHTS, pixel_anchors=2, pixel_hard_k=3, pixel_chunk=5, region_num=4,
                    background_anchors=2,
                    region_chunk=3, object_temperature=0.0)


def test_sharded_equals_unsharded_full_objective_with_sampled_anchors(meshes):
    out, batch = make_data(31, N=16)
    cfg = FULL_CFG
    sel = pixel_selection(out, batch, cfg)
    assert max(sel["conf"].sum(1)) > cfg.pixel_anchors          # anchors really are sampled
    rng = jax.random.key(7)
    results = {n: run_loss(out, batch, cfg, meshes[n], rng, grad=True) for n in (1, 8)}
    (t1, v1), g1 = results[1]
    for (t, v), g in results.values():      # finite values and gradients for the full objective
        assert np.isfinite(t) and all(np.isfinite(x) for x in v.values())
        assert all(np.all(np.isfinite(x)) for x in g.values())
    for n in (8,):
        (tn, vn), gn = results[n]
        np.testing.assert_allclose(tn, t1, rtol=1e-6)
        for t in TERM_NAMES:
            np.testing.assert_allclose(vn[t], v1[t], rtol=1e-6, err_msg=t)
        for k in out:
            np.testing.assert_allclose(gn[k], g1[k], rtol=GRAD_RTOL, atol=GRAD_ATOL,
                                       err_msg=f"{k} on {n} devices")
    # the rng does drive the anchor sampling
    (_, v_other), _ = run_loss(out, batch, cfg, meshes[8], jax.random.key(8), grad=True)
    assert v_other["pixel"] != v1["pixel"] and v_other["background"] != v1["background"]
    for t in ("image_text", "object", "presence", "region"):
        np.testing.assert_allclose(v_other[t], v1[t], rtol=1e-6)


def test_sampled_anchors_follow_documented_rng(meshes):
    """Anchors = top-A gumbel(fold_in(fold_in(rng, term position), global image)) among
    confident patches; the rng is folded with the pixel term's position in the full objective."""
    out, batch = make_data(32, N=16)
    cfg = FULL_CFG
    pos = list(losses.active_terms(cfg)).index("pixel")
    rng = jax.random.key(3)
    conf = pixel_selection(out, batch, cfg)["conf"]
    anchors = {}
    for g in range(conf.shape[0]):
        noise = np.asarray(jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(rng, pos), g), (16,)))
        order = [n for n in np.argsort(-noise, kind="stable") if conf[g, n]]
        anchors[g] = order[:cfg.pixel_anchors]
    expected = ref_pixel(out, batch, cfg, sel=pixel_selection(out, batch, cfg, anchors=anchors))
    assert max(len(a) for a in anchors.values()) == 2 and max(conf.sum(1)) > 2
    (total, values), _ = run_loss(out, batch, cfg, meshes[8], rng, grad=True)
    np.testing.assert_allclose(values["pixel"], expected, rtol=RTOL, atol=ATOL)
    # the other terms of the full objective and the weighted sum
    for t in ("image_text", "object", "presence", "region"):
        np.testing.assert_allclose(values[t], REFS[t](out, batch, cfg), rtol=RTOL, atol=ATOL, err_msg=t)
    np.testing.assert_allclose(total, sum(FULL_WEIGHTS[t] * values[t] for t in TERM_NAMES), rtol=1e-6)
