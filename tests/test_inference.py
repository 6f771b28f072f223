"""Prediction units on constructed features, pmap == one device, window stitching."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgca_jax import inference as I
from mgca_jax.data import scenes
from mgca_jax.evaluation import protocol, zeroshot
from mgca_jax.models.two_tower import TwoTower, random_params

E = 16
EYE = np.eye(E, dtype=np.float32)
CLASSES = jnp.asarray(EYE[:3])        # 0 grass, 1 sky, 2 cat: one axis each
GRASS, SKY, CAT = 0, 1, 2
TWO = I.UnitConfig(num_groups=2)      # two segments: the top and the bottom half
UNIT_CFG = I.UnitConfig(num_groups=4, group_iters=2)  # small: quick to compile


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _halves(top, bottom=EYE[SKY] + EYE[4]):
    """An 8x8 feature map: `top` on rows 0-3, sky on rows 4-7 (features as [64, E])."""
    f = np.zeros((8, 8, E), np.float32)
    f[:4], f[4:] = top, bottom
    return f


unit_scores = jax.jit(I.unit_scores, static_argnums=(0, 3, 4))
adaptive_aux = jax.jit(functools.partial(I.adaptive_unit, with_aux=True), static_argnums=(2,))


def _labels(unit, f):
    return np.asarray(unit_scores(unit, jnp.asarray(f.reshape(64, E)), CLASSES, TWO)
                      .argmax(-1)).reshape(8, 8)


def _aux(f):
    return jax.tree.map(np.asarray, adaptive_aux(jnp.asarray(f.reshape(64, E)), CLASSES, TWO)[1])


def test_speckle_from_noise_is_merged():
    # Top half leans to grass by a small margin: grass 1.0 vs sky 0.8 (before normalising,
    # |f| = 1.62). Noise of 0.1 per axis (|noise| ~ 0.4) moves the sky-minus-grass score
    # by N(0, 0.1 * sqrt(2)) against a margin of 0.2 / 1.62 = 0.12: ~20% of the 32 top
    # patches flip, so the pixel unit speckles. Pooling 32 patches cuts the noise by
    # sqrt(32) (5 sigma of margin), so the segment is grass.
    truth = np.repeat([GRASS, SKY], 4)[:, None] * np.ones((1, 8), int)
    rng = np.random.default_rng(0)
    f = _norm(_halves(EYE[GRASS] + 0.8 * EYE[SKY] + EYE[3])) + 0.1 * rng.normal(size=(8, 8, E))
    f = f.astype(np.float32)
    pixel_errors = int((_labels("pixel", f) != truth).sum())
    assert 3 <= pixel_errors <= 12                       # expected ~6 flipped patches
    assert (_labels("group", f) == truth).all()
    assert (_labels("adaptive", f) == truth).all()
    aux = _aux(f)
    # Both segments: most patches agree (>= 20/32) and every patch has cosine
    # ~ 1 / sqrt(1 + 16 * 0.1**2) = 0.93 with its centroid, so both are coarse and
    # the flipped patches are not outliers (0.93 >> 0.5).
    assert aux["coarse"].all() and not aux["fine"].any()
    top = aux["segments"][0]
    assert aux["agreement"][top] == pytest.approx(1 - pixel_errors / 32)
    assert aux["coherence"].min() > 0.9


def test_small_object_in_a_large_segment_keeps_its_label():
    # A 2x2 cat inside the grass half. cos(cat, grass) = 0.6 / (|cat| |grass|)
    # = 0.6 / (1.166 * 1.414) = 0.364 > cos(cat, sky) = 0, so with two segments the cat
    # joins the grass segment, whose pooled embedding (28 grass + 4 cat) scores grass
    # 28 / 1.414 = 19.8 vs cat 4 / 1.166 = 3.4: the group unit swallows the cat.
    f = _halves(EYE[GRASS] + EYE[3])
    f[1:3, 5:7] = EYE[CAT] + 0.6 * EYE[3]
    f = _norm(f)
    truth = np.repeat([GRASS, SKY], 4)[:, None] * np.ones((1, 8), int)
    truth[1:3, 5:7] = CAT
    assert (_labels("pixel", f) == truth).all()
    group = _labels("group", f)
    assert (group[1:3, 5:7] == GRASS).all() and (group != truth).sum() == 4
    assert (_labels("adaptive", f) == truth).all()
    aux = _aux(f)
    # The grass segment is coarse (agreement 28/32, the cat barely lowers coherence),
    # but each cat patch disagrees and has cosine 0.478 < 0.5 with the segment's
    # centroid: an outlier that keeps its own (pixel) score.
    grass, cat = _norm(EYE[GRASS] + EYE[3]), _norm(EYE[CAT] + 0.6 * EYE[3])
    centre = _norm(28 * grass + 4 * cat)
    top = aux["segments"][0]
    assert aux["coarse"].all()
    assert aux["agreement"][top] == pytest.approx(28 / 32)
    assert aux["coherence"][top] == pytest.approx((28 * grass @ centre + 4 * cat @ centre) / 32, abs=1e-5)
    assert cat @ centre == pytest.approx(0.478, abs=1e-3)
    want = np.zeros((8, 8), bool)
    want[1:3, 5:7] = True
    np.testing.assert_array_equal(aux["outlier"].reshape(8, 8), want)
    np.testing.assert_array_equal(aux["fine"].reshape(8, 8), want)


def test_segment_that_mixes_two_things_is_labelled_per_patch():
    # A cat/grass checkerboard on the top half: k-means keeps it as one segment, whose
    # pooled embedding scores cat 16 * 0.858 = 13.7 > grass 16 * 0.707 = 11.3, so the
    # group unit calls all 32 patches cat. Every patch has cosine 0.826 with the
    # centroid (coherence 0.826 >= 0.8: alike enough), but only half agree with its
    # label (agreement 0.5 < 0.6), so the segment is fine: each patch keeps its label.
    yy, xx = np.mgrid[:4, :8]
    checker = ((yy + xx) % 2 == 0)[..., None]
    f = _norm(_halves(np.where(checker, EYE[CAT] + 0.6 * EYE[3], EYE[GRASS] + EYE[3])))
    truth = np.repeat([GRASS, SKY], 4)[:, None] * np.ones((1, 8), int)
    truth[:4][checker[..., 0]] = CAT
    assert (_labels("pixel", f) == truth).all()
    assert (_labels("group", f) != truth).sum() == 16
    assert (_labels("adaptive", f) == truth).all()
    aux = _aux(f)
    top, bottom = aux["segments"][0], aux["segments"][-1]
    assert aux["agreement"][top] == 0.5 and aux["coherence"][top] == pytest.approx(0.826, abs=1e-3)
    assert not aux["coarse"][top] and aux["coarse"][bottom]
    np.testing.assert_array_equal(aux["fine"].reshape(8, 8), np.repeat([True, False], 4)[:, None]
                                  * np.ones((1, 8), bool))


def test_two_toned_texture_with_a_minority_look_stays_whole():
    # One thing with two looks: look A (8 of the 32 top patches) scores sky, look B
    # scores grass, so the pixel unit labels the 8 A patches wrong. The looks have
    # cosine 0.683; the centroid of 24 B + 8 A has cosine (8 + 24 * 0.683) / 30.04 = 0.812
    # with A and 0.981 with B: coherence 0.939 and agreement 24/32, so the segment is
    # coarse, and the A patches (0.812 >= 0.5) are not outliers: all take grass.
    yy, xx = np.mgrid[:4, :8]
    look_a = 0.5 * EYE[GRASS] + 1.3 * EYE[SKY] + EYE[3]
    look_b = 1.5 * EYE[GRASS] + 0.3 * EYE[SKY] + EYE[3]
    f = _norm(_halves(np.where(((yy + xx) % 4 == 0)[..., None], look_a, look_b)))
    truth = np.repeat([GRASS, SKY], 4)[:, None] * np.ones((1, 8), int)
    assert (_labels("pixel", f) != truth).sum() == 8
    assert (_labels("adaptive", f) == truth).all()
    aux = _aux(f)
    top = aux["segments"][0]
    assert aux["agreement"][top] == 0.75
    assert aux["coherence"][top] == pytest.approx(0.939, abs=1e-3)
    assert aux["coarse"].all() and not aux["fine"].any()


def test_coherence_threshold_decides_a_segment_that_agrees_but_varies():
    # The minority-look texture above, each patch with a private component of norm 1.2 on
    # one of 8 spare axes (signs alternate, so they cancel in the segment's sum). The
    # segment still agrees 24/32 = 0.75 >= 0.6 with its label and no A patch is an
    # outlier, but its patches look less alike: coherence 0.781 (derived below in
    # float64). At the default 0.8 the segment is fine and the 8 A patches keep their own
    # (wrong, sky) label; at 0.75 the same segment is coarse and they all take grass.
    look_a = 0.5 * EYE[GRASS] + 1.3 * EYE[SKY] + EYE[3]
    look_b = 1.5 * EYE[GRASS] + 0.3 * EYE[SKY] + EYE[3]
    n = np.arange(32)
    is_a = ((n // 8 + n % 8) % 4 == 0)
    top = np.where(is_a[:, None], look_a, look_b) + 1.2 * np.where(n % 16 < 8, 1, -1)[:, None] * EYE[5 + n % 8]
    f = _norm(_halves(top.reshape(4, 8, E))).astype(np.float32)
    truth = np.repeat([GRASS, SKY], 4)[:, None] * np.ones((1, 8), int)
    pixel = _labels("pixel", f)
    assert (pixel != truth).sum() == 8 and (pixel[:4].reshape(-1)[is_a] == SKY).all()
    # float64 reference: the segment's centroid, its coherence and the A patches' cosine
    p = _norm(f[:4].reshape(32, E).astype(np.float64))
    centre = _norm(p.sum(0))
    coherence = float((p @ centre).mean())
    assert 0.75 < coherence < 0.8 and coherence == pytest.approx(0.781, abs=1e-3)
    assert (p[is_a] @ centre).min() > TWO.outlier_thresh      # the A patches are not outliers
    aux = _aux(f)
    top_seg = aux["segments"][0]
    assert (aux["segments"][:32] == top_seg).all() and (aux["segments"][32:] != top_seg).all()
    assert aux["agreement"][top_seg] == 0.75
    assert aux["coherence"][top_seg] == pytest.approx(coherence, abs=1e-5)
    assert not aux["coarse"][top_seg] and not aux["outlier"].any()
    np.testing.assert_array_equal(_labels("adaptive", f), pixel)        # fine: patch by patch
    loose = I.UnitConfig(num_groups=2, coherence_thresh=0.75)
    coarse = np.asarray(unit_scores("adaptive", jnp.asarray(f.reshape(64, E)), CLASSES, loose)
                        .argmax(-1)).reshape(8, 8)
    np.testing.assert_array_equal(coarse, truth)                        # coarse: all grass


def test_background_rule_counts_in_agreement():
    # With a threshold above every grass score (0.707), the grass segment and its pixels
    # are background; the cat patches (pixel label cat, segment label background) still
    # disagree and are outliers (cosine 0.478), so they keep cat.
    f = _halves(EYE[GRASS] + EYE[3])
    f[1:3, 5:7] = EYE[CAT] + 0.6 * EYE[3]
    f = _norm(f)
    scores = unit_scores("adaptive", jnp.asarray(f.reshape(64, E)), CLASSES, TWO, 0.75)
    labels = np.asarray(protocol.predict_labels(scores, 0.75)).reshape(8, 8)
    want = np.zeros((8, 8), int)
    want[1:3, 5:7] = CAT + 1
    np.testing.assert_array_equal(labels, want)


def test_unit_config_and_names():
    with pytest.raises(ValueError, match="num_groups"):
        I.UnitConfig(num_groups=0)
    with pytest.raises(ValueError, match="unknown unit"):
        I.unit_scores("region", jnp.ones((4, E)), CLASSES)


# --------------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def model_and_params():
    model = TwoTower(image_variant="mu/8", text_variant="mu", vocab_size=64, max_len=8, embed_dim=32)
    class_emb = I.l2_normalize(jnp.asarray(np.random.default_rng(1).normal(size=(5, 32)), jnp.float32))
    return model, random_params(model, 64), class_emb


def _images(n, size=64):
    return [scenes.make_example(3, i, size)["image"] for i in range(n)]


@pytest.fixture(scope="module")
def bg(model_and_params):
    """A background threshold that makes about half of the pixels background."""
    model, params, class_emb = model_and_params
    x = jnp.stack([protocol.normalize(img) for img in _images(3)])
    scores = jax.jit(zeroshot.patch_scores, static_argnums=0)(model, params, x, class_emb)
    return float(np.median(np.asarray(scores).max(-1)))


@pytest.fixture(scope="module")
def whole_image_scores(model_and_params, bg):
    """Unit scores of one whole normalised image [1, 64, 64, 3], upsampled: [U, 64, 64, C]."""
    model, params, class_emb = model_and_params
    fn = jax.jit(I.window_unit_scores, static_argnums=(0, 1, 2, 3))
    return lambda x: I.upsample(fn(model, I.UNITS, UNIT_CFG, bg, params, x, class_emb), x.shape[1:3])[:, 0]


ONE_WINDOW = I.ProtocolConfig(short_side=64, crop=64, stride=32)   # 64x64 images: one window


def _segmenter(model_and_params, devices, bg, pcfg=ONE_WINDOW, windows_per_device=1):
    model, params, class_emb = model_and_params
    return I.Segmenter(model, params, class_emb, units=I.UNITS, unit_config=UNIT_CFG, protocol_config=pcfg,
                       bg_thresh=bg, devices=devices, windows_per_device=windows_per_device)


def test_pmap_equals_one_device_and_one_window_equals_whole_image(model_and_params, bg,
                                                                  whole_image_scores):
    model, params, class_emb = model_and_params
    devices = jax.local_devices()
    assert len(devices) == 8
    images = _images(3)                                  # 3 windows of 64x64: 5 of 8 are padding
    x = jnp.stack([protocol.normalize(img) for img in images])
    # One window per device call on either side: the same per-device program, so the
    # results agree to the last bit (k-means argmaxes included).
    one, one_lg = _segmenter(model_and_params, devices[:1], bg).segment(images, return_logits=True)
    eight, eight_lg = _segmenter(model_and_params, devices, bg).segment(images, return_logits=True)
    for i in range(len(images)):
        assert eight[i].shape == (3, 64, 64)
        np.testing.assert_array_equal(one[i], eight[i])
        np.testing.assert_allclose(one_lg[i], eight_lg[i], rtol=1e-6, atol=1e-6)
        # the window covers the image: stitching is the identity
        whole = whole_image_scores(x[i:i + 1])
        np.testing.assert_allclose(eight_lg[i], whole, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(eight[i], protocol.predict_labels(whole, bg))
    assert 0.2 < np.mean([(e[0] == 0).mean() for e in eight]) < 0.8   # background and classes


def test_many_windows_of_several_images_stitch_like_the_protocol(model_and_params, bg,
                                                                 whole_image_scores):
    # Windows of two images of different sizes, batched together over 8 devices, give
    # the logits of protocol.infer_logits run image by image, window by window.
    pcfg = I.ProtocolConfig(short_side=80, crop=64, stride=32)
    seg = _segmenter(model_and_params, jax.local_devices(), bg, pcfg)
    imgs = [_images(1)[0], np.ascontiguousarray(_images(2, 80)[1][:64])]   # 64x64 and 64x80
    _, logits = seg.segment(imgs, return_logits=True)
    for image, lg in zip(imgs, logits):
        for u in range(len(I.UNITS)):
            ref = protocol.infer_logits(image, lambda c, u=u: whole_image_scores(c)[u][None], 5,
                                        short=80, crop=64, stride=32, batch_size=1)
            assert lg[u].shape == image.shape[:2] + (5,)
            np.testing.assert_allclose(lg[u], ref, rtol=1e-5, atol=1e-5)


def test_several_windows_per_device_match_one(model_and_params, bg):
    # 3 images x 4 windows over 2 devices: with 3 windows per device a call holds 6 windows
    # (device 0 gets windows 0-2, device 1 windows 3-5), so putting the results back in
    # window order matters; with 1 per device it does not.
    pcfg = I.ProtocolConfig(short_side=80, crop=64, stride=32)
    devices = jax.local_devices()[:2]
    images = _images(3)
    one, one_lg = _segmenter(model_and_params, devices, bg, pcfg).segment(images, return_logits=True)
    three, three_lg = _segmenter(model_and_params, devices, bg, pcfg, 3).segment(images, return_logits=True)
    for i in range(len(images)):
        np.testing.assert_allclose(three_lg[i], one_lg[i], rtol=1e-5, atol=1e-5)
        assert (three[i] == one[i]).mean() > 0.999
    assert not np.allclose(one_lg[0], one_lg[1], atol=1e-2)       # the images do differ


def test_position_embedding_follows_the_grid(model_and_params):
    _, params, _ = model_and_params
    assert I.fit_pos_embedding(params, (8, 8)) is params
    pos = I.fit_pos_embedding(params, (6, 10))["image_tower"]["pos_embedding"]
    assert pos.shape == (1, 60, 128)
