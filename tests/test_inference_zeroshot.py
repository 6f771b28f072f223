"""Zero-shot values (prompt ensemble, background mapping, mIoU) against float64 NumPy.

A hand model stands in for the towers: a patch's embedding is its mean colour (2x2
patches, joint space = RGB) and a prompt's embedding is a row of a table picked by
its first token, so every number the evaluation produces can be re-derived here.
"""
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mgca_jax.evaluation import protocol, zeroshot

PATCH = 2
CLASSES = ("red", "green", "blue")
TEMPLATES = protocol.get_templates("subset")          # CLIP's 7


class HandModel(nn.Module):
    num_prompts: int
    image_variant: str = "mu/2"          # read by inference.patch_grid: patch 2

    def setup(self):
        self.table = self.param("table", nn.initializers.zeros, (self.num_prompts + 4, 3))

    def encode_image(self, images):
        b, h, w, c = images.shape
        x = images.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).mean(axis=(2, 4))
        return {"patch_embed": x.reshape(b, -1, c), "grid": (h // PATCH, w // PATCH)}

    def encode_text(self, tokens):
        return {"text_embed": self.table[tokens[:, 1]]}

    def __call__(self, tokens):
        return self.encode_text(tokens)


class PromptIds:
    """Tokenizer stand-in: prompt i -> [BOS, i + 4, EOS, 0...]."""

    def __init__(self, prompts):
        self.ids = {p: i + 4 for i, p in enumerate(prompts)}

    def encode(self, text, max_len):
        return ([2, self.ids[text], 3] + [0] * max_len)[:max_len]


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def hand():
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    rng = np.random.default_rng(0)
    # Template embeddings: around the class's colour axis, with norms from 0.2 to 5, so an
    # ensemble that is not renormalised has a norm well below 1 that differs per class.
    base = np.repeat(np.eye(3), len(TEMPLATES), axis=0) + 0.6 * rng.normal(size=(len(prompts), 3))
    table = base * rng.uniform(0.2, 5.0, size=(len(prompts), 1))
    params = {"table": jnp.asarray(np.concatenate([np.zeros((4, 3)), table]), jnp.float32)}
    return HandModel(len(prompts)), params, PromptIds(prompts), table


def reference_class_embeddings(table):
    t = _norm(np.asarray(table, np.float64)).reshape(len(CLASSES), len(TEMPLATES), 3)
    return _norm(t.mean(axis=1))


def test_prompt_ensemble_is_renormalised(hand):
    model, params, tok, table = hand
    emb = np.asarray(zeroshot.class_embeddings(model, params, tok, CLASSES, TEMPLATES, 8))
    want = reference_class_embeddings(table)
    raw_norms = np.linalg.norm(_norm(table).reshape(3, len(TEMPLATES), 3).mean(1), axis=-1)
    assert raw_norms.max() < 0.97 and np.ptp(raw_norms) > 0.02    # renormalising matters
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(emb, want, atol=1e-6)


def _upsample_bilinear(x, out_h, out_w):
    """[h, w, C] -> [out_h, out_w, C]: half-pixel centres, edges clamped (float64)."""
    h, w = x.shape[:2]

    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, h)
    x0, x1, fx = axis(out_w, w)
    rows = x[y0] * (1 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def _iou_reference(pred, gt, n):
    keep = gt != 255
    p, g = pred[keep], gt[keep]
    iou = []
    for c in range(n):
        inter = np.sum((p == c) & (g == c))
        union = np.sum((p == c) | (g == c))
        iou.append(inter / union if union else np.nan)
    return np.array(iou)


def test_evaluate_matches_a_float64_rederivation(hand, tmp_path):
    """zeroshot.evaluate over the shared predict function (inference.make_segmenter, what
    the trainer builds) on uint8 8x8 images, one 8x8 window, pixel unit, with the
    background rule: labels and IoUs re-derived in float64."""
    from mgca_jax import inference
    model, params, tok, table = hand
    params = {**params, "image_tower": {"pos_embedding": jnp.zeros((1, 16, 3))}}   # 4x4 grid
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, size=(5, 8, 8)).astype(np.int32)
    masks[:, 0, :3] = 255                                       # ignored pixels
    bg = 0.55
    seg = inference.make_segmenter(model, params, tok, CLASSES, TEMPLATES, 8, units=("pixel",),
                                   protocol_config=inference.ProtocolConfig(8, 2048, 8, 8),
                                   bg_thresh=bg, windows_per_device=1)
    batches = [{"image": images[:3], "mask": masks[:3]}, {"image": images[3:], "mask": masks[3:]}]
    grid = tmp_path / "grid.png"
    res = zeroshot.evaluate(seg.predict_fn(), batches, ("background",) + CLASSES,
                            grid_path=str(grid), num_examples=4)
    assert grid.stat().st_size > 500

    mean, std = np.array(protocol.IMAGENET_MEAN), np.array(protocol.IMAGENET_STD)
    x = ((images - mean) / std).reshape(5, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    scores = _norm(x) @ reference_class_embeddings(table).T     # [5, 4, 4, 3]
    up = np.stack([_upsample_bilinear(s, 8, 8) for s in scores])
    full = np.concatenate([np.full(up.shape[:-1] + (1,), bg), up], axis=-1)
    top2 = np.sort(full, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-5          # no near-ties: labels are exact
    pred = full.argmax(-1)                                      # 0 = background, class c = c + 1
    assert 0.1 < (pred == 0).mean() < 0.9 and len(np.unique(pred)) == 4
    iou = _iou_reference(pred, masks, 4)
    assert res["label_names"] == ("background",) + CLASSES
    np.testing.assert_allclose(res["iou"], iou, atol=1e-12)
    assert res["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    with pytest.raises(ValueError, match="uint8"):              # normalised input is refused
        zeroshot.evaluate(seg.predict_fn(), [{"image": images.astype(np.float32), "mask": masks}],
                          ("background",) + CLASSES)


def test_labels_do_not_depend_on_the_callers_batching(hand):
    """The trainer (eval batches) and `evaluate` (device-sized chunks) hand the Segmenter
    different numbers of images; every call runs whole d x windows_per_device windows, so
    the labels, hence the mIoU, agree to the last bit."""
    from mgca_jax import inference
    model, params, tok, _ = hand
    params = {**params, "image_tower": {"pos_embedding": jnp.zeros((1, 16, 3))}}
    images = np.random.default_rng(3).integers(0, 256, size=(7, 8, 8, 3), dtype=np.uint8)
    seg = inference.make_segmenter(model, params, tok, CLASSES, TEMPLATES, 8, units=("adaptive",),
                                   protocol_config=inference.ProtocolConfig(8, 2048, 8, 8),
                                   bg_thresh=0.55, windows_per_device=3)
    shapes, fn = [], seg._fn
    seg._fn = lambda p, crops, emb: shapes.append(crops.shape) or fn(p, crops, emb)
    predict = seg.predict_fn()
    whole = predict(images)
    for chunks in ((1, 6), (2, 2, 3), (5, 2)):
        parts = np.split(images, np.cumsum(chunks)[:-1])
        got = [p for part in parts for p in predict(part)]
        for a, b in zip(whole, got):
            np.testing.assert_array_equal(a, b)
    assert set(shapes) == {(len(seg.devices), 3, 8, 8, 3)}     # every call: whole device batches


def test_trivial_baselines_hand_case():
    # Two 2x3 images (255 ignored). Image A: labels 0,0,0,2,2,255 -> majority 0 (background),
    # majority object 2. Image B: 1,1,1,1,2,0 -> majority 1, majority object 1.
    a = np.array([[0, 0, 0], [2, 2, 255]])
    b = np.array([[1, 1, 1], [1, 2, 0]])
    res = zeroshot.trivial_baselines([{"mask": np.stack([a, b])}], 3)
    # all background: bg IoU = 4 / 11 (4 bg pixels of 11 valid); classes 1, 2: IoU 0.
    assert res["all_background"] == pytest.approx((4 / 11 + 0 + 0) / 3)
    # A -> 0 everywhere, B -> 1 everywhere. bg: gt 4 px, predicted 5 (all of A), both 3,
    # so U = 4 + 5 - 3 = 6; class 1: I 4, U 6; class 2: I 0.
    assert res["majority_label_per_image"] == pytest.approx((3 / 6 + 4 / 6 + 0) / 3)
    # A -> 2 everywhere, B -> 1: bg I 0; class 1 I 4, U 6; class 2 I 2, U 3 + 5 - 2 = 6.
    assert res["majority_object_per_image"] == pytest.approx((0 + 4 / 6 + 2 / 6) / 3)


def test_evaluate_embedded_job_matches_a_float64_rederivation(hand):
    """`python -m mgca_jax.evaluate --dataset=embedded`'s scoring (evaluate_job with the
    embedded world's label convention: 0 = background, class c = label c + 1) on 8x8
    images scored as one 8x8 window by the pixel unit; it is test_evaluate_matches_a_float64_
    rederivation's reference, reached through the CLI's job runner."""
    import types

    from mgca_jax import evaluate
    model, params, tok, table = hand
    params = {**params, "image_tower": {"pos_embedding": jnp.zeros((1, 16, 3))}}   # 4x4 grid
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    masks = rng.integers(0, 4, size=(5, 8, 8)).astype(np.uint8)
    masks[:, -1, -2:] = 255
    bg = 0.55
    job = evaluate.Job("embedded", "hand scenes", CLASSES, True, 5,
                       lambda: ((str(i), images[i], masks[i]) for i in range(5)), train_size=4)
    loaded = types.SimpleNamespace(model=model, params=params, config=ml_collections.ConfigDict(
        dict(eval=dict(bg_thresh=bg), input=dict(max_len=8))))
    args = types.SimpleNamespace(bg_thresh=None, short_side=8, max_long=2048, crop=8, stride=8,
                                 windows_per_device=1, bootstrap=0, png_rows=8)
    record = evaluate.evaluate_job(job, loaded, tok, TEMPLATES, ("pixel",), args,
                                   evaluate.inference.UnitConfig())

    mean, std = np.array(protocol.IMAGENET_MEAN), np.array(protocol.IMAGENET_STD)
    x = ((images - mean) / std).reshape(5, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    scores = _norm(x) @ reference_class_embeddings(table).T
    up = np.stack([_upsample_bilinear(s, 8, 8) for s in scores])
    full = np.concatenate([np.full(up.shape[:-1] + (1,), bg), up], axis=-1)
    top2 = np.sort(full, axis=-1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-5
    pred = full.argmax(-1)
    assert 0.1 < (pred == 0).mean() < 0.9 and len(np.unique(pred)) == 4
    iou = _iou_reference(pred, masks.astype(np.int64), 4)
    assert record["label_names"] == ["background", *CLASSES] and record["bg_thresh"] == bg
    got = record["units"]["pixel"]
    np.testing.assert_allclose([got["iou"][n] for n in record["label_names"]], iou, atol=1e-12)
    assert got["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    gt = masks.astype(np.int64)

    def recall_of(pred):
        return [((pred == c) & (gt == c)).sum() / (gt == c).sum() for c in range(4)]

    recall = recall_of(pred)
    np.testing.assert_allclose([got["class_acc"][n] for n in record["label_names"]], recall, atol=1e-12)
    assert got["macc_objects"] == pytest.approx(np.mean(recall[1:]), abs=1e-12)   # background left out

    # --bg_thresh=none: every pixel takes its best class, scored as label class + 1.
    args.bg_thresh = "none"
    record = evaluate.evaluate_job(job, loaded, tok, TEMPLATES, ("pixel",), args,
                                   evaluate.inference.UnitConfig())
    pred = up.argmax(-1) + 1
    recall = recall_of(pred)
    assert record["bg_thresh"] is None and recall[0] == 0
    got = record["units"]["pixel"]
    np.testing.assert_allclose([got["iou"][n] for n in record["label_names"]],
                               _iou_reference(pred, gt, 4), atol=1e-12)
    assert got["macc_objects"] == pytest.approx(np.mean(recall[1:]), abs=1e-12)
