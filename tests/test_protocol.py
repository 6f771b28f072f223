"""Inference protocol: window placement, stitching, resizing, background rule, prompts."""
import jax.numpy as jnp
import numpy as np
import pytest

from mgca_jax.evaluation import protocol as P


def _pixel_linear(num_classes, seed=0):
    """A translation-equivariant logits_fn: the same linear map of RGB at every pixel."""
    w = jnp.asarray(np.random.default_rng(seed).normal(size=(3, num_classes)), jnp.float32)
    b = jnp.arange(num_classes, dtype=jnp.float32) * 0.1
    return lambda crops: crops @ w + b


def test_window_positions_500x700_hand_computed():
    # h_grids = (500-448+223)//224 + 1 = 2 ; w_grids = (700-448+223)//224 + 1 = 3
    wins = P.window_positions(500, 700, 448, 224)
    ys = [(0, 448), (52, 500)]            # second row: y1=224 -> y2=500 -> shifted to 52
    xs = [(0, 448), (224, 672), (252, 700)]  # third col: x1=448 -> x2=700 -> 252
    assert wins == [(y1, y2, x1, x2) for (y1, y2) in ys for (x1, x2) in xs]


def test_window_positions_small_and_exact():
    assert P.window_positions(300, 200, 448, 224) == [(0, 300, 0, 200)]  # one smaller window
    assert P.window_positions(448, 448, 448, 224) == [(0, 448, 0, 448)]
    # 448 x 449: w_grids = (449-448+223)//224 + 1 = 2, second window clamped to 1..449
    assert P.window_positions(448, 449, 448, 224) == [(0, 448, 0, 448), (0, 448, 1, 449)]
    # 448 x 2048 (a typical resized panorama): 9 windows along the width
    assert len(P.window_positions(448, 2048)) == 9


def test_single_window_equals_whole_image():
    rng = np.random.default_rng(1)
    img = jnp.asarray(rng.normal(size=(12, 10, 3)), jnp.float32)
    c = 4
    # a non-equivariant logits_fn (depends on position in the crop) is fine when one window covers all
    pos = jnp.arange(12 * 10 * c, dtype=jnp.float32).reshape(12, 10, c)
    fn = lambda crops: crops.sum(-1, keepdims=True) + pos[None]
    out = P.sliding_window_logits(img, fn, c, crop=16, stride=8)
    np.testing.assert_allclose(out, fn(img[None])[0], rtol=1e-6)


@pytest.mark.parametrize("hw", [(5, 7), (16, 16), (17, 30), (33, 20), (40, 57)])
def test_equivariant_fn_sliding_equals_whole(hw):
    c = 5
    fn = _pixel_linear(c)
    img = jnp.asarray(np.random.default_rng(hw[0] * 100 + hw[1]).uniform(0, 255, size=hw + (3,)), jnp.float32)
    out = P.sliding_window_logits(img, fn, c, crop=16, stride=8)
    assert out.shape == hw + (c,)
    np.testing.assert_allclose(out, fn(img[None])[0], rtol=1e-5, atol=1e-4)
    out_b = P.sliding_window_logits(img, fn, c, crop=16, stride=8, batch_size=2)
    np.testing.assert_allclose(out_b, out, rtol=1e-6, atol=1e-5)


def test_equivariant_fn_protocol_size_500x700():
    c = 3
    fn = _pixel_linear(c, seed=3)
    img = jnp.asarray(np.random.default_rng(2).uniform(0, 1, size=(500, 700, 3)), jnp.float32)
    calls = []
    out = P.sliding_window_logits(img, lambda x: calls.append(x.shape) or fn(x), c)
    assert calls == [(6, 448, 448, 3)]
    np.testing.assert_allclose(out, fn(img[None])[0], rtol=1e-5, atol=1e-5)


def test_averaging_counts_overlaps():
    # two windows overlapping on columns 4..7: window 1 says 2, window 2 says 4 -> mean 3 there
    img = jnp.zeros((4, 12, 3))
    wins = P.window_positions(4, 12, crop=(4, 8), stride=(4, 4))
    assert wins == [(0, 4, 0, 8), (0, 4, 4, 12)]
    seen = iter([jnp.full((1, 4, 8, 1), 2.0), jnp.full((1, 4, 8, 1), 4.0)])
    out = P.sliding_window_logits(img, lambda x: next(seen), 1, crop=(4, 8), stride=(4, 4), batch_size=1)
    np.testing.assert_allclose(out[0, :, 0], [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4])


def test_bad_logits_shape_raises():
    with pytest.raises(ValueError, match="expected"):
        P.sliding_window_logits(jnp.zeros((8, 8, 3)), lambda x: x, 5, crop=8, stride=4)


def test_rescaled_size_and_resize():
    assert P.rescaled_size(500, 375) == (597, 448)          # short side 375 -> 448
    assert P.rescaled_size(375, 500) == (448, 597)
    assert P.rescaled_size(1024, 2048) == (448, 896)        # cityscapes
    assert P.rescaled_size(100, 1000) == (205, 2048)        # long side capped at 2048
    assert P.rescaled_size(448, 448) == (448, 448)
    img = np.random.default_rng(0).uniform(0, 255, size=(50, 80, 3)).astype(np.float32)
    out = P.resize_short_side(img, short=20, max_long=2048)
    assert out.shape == (20, 32, 3) and out.dtype == jnp.float32
    const = P.resize_short_side(np.full((30, 60, 3), 7.0), short=45)
    assert const.shape == (45, 90, 3)
    np.testing.assert_allclose(const, 7.0, rtol=1e-6)


def test_resize_logits_bilinear_half_pixel():
    x = jnp.asarray([[0.0, 4.0]])[..., None]                 # 1x2 -> 1x4
    out = P.resize_logits(x, (1, 4))[0, :, 0]
    # align_corners=False: sample points -0.25, 0.25, 0.75, 1.25 (edges clamped)
    np.testing.assert_allclose(out, [0.0, 1.0, 3.0, 4.0], atol=1e-6)


def test_normalize():
    x = np.array([[[123.675, 116.28, 103.53], [182.07, 173.4, 160.905]]], np.float32)
    np.testing.assert_allclose(P.normalize(x), [[[0, 0, 0], [1, 1, 1]]], atol=1e-5)


def test_predict_labels_with_background():
    logits = jnp.asarray([[[0.2, 0.7, 0.1],     # class 1 beats 0.5 -> label 2
                           [0.3, 0.4, 0.45]],   # nothing beats 0.5 -> background 0
                          [[0.9, 0.1, 0.95],    # class 2 -> label 3
                           [0.5, 0.1, 0.2]]])   # tie with threshold -> background
    np.testing.assert_array_equal(P.predict_labels(logits, bg_thresh=0.5), [[2, 0], [3, 0]])
    np.testing.assert_array_equal(P.predict_labels(logits), [[1, 2], [2, 0]])


def test_infer_logits_end_to_end_shape():
    c = 4
    fn = _pixel_linear(c, seed=5)
    img = np.random.default_rng(0).integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    lg = P.infer_logits(img, fn, c, short=20, crop=16, stride=8)
    assert lg.shape == (30, 45, c)


def test_templates():
    assert P.TEMPLATES["simple"] == ("a photo of a {}.",)
    assert len(P.TEMPLATES["subset"]) == 7
    assert len(P.TEMPLATES["custom"]) == 9
    assert P.TEMPLATES["custom"][:7] == P.TEMPLATES["subset"]
    assert P.TEMPLATES["custom"][7:] == ("a photo of many {}.", "a photo of {}s.")
    assert "itap of a {}." in P.TEMPLATES["custom"]
    full = P.TEMPLATES["full"]
    assert len(full) == 80 and len(set(full)) == 80
    assert set(P.TEMPLATES["subset"]) <= set(full)
    for ts in P.TEMPLATES.values():
        for t in ts:
            assert t.count("{}") == 1 and t.format("cat") != t
    assert P.get_templates() == P.TEMPLATES["custom"]
