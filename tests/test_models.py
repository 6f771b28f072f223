"""Model variants by name and output shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mgca_jax.models import text, two_tower, vit


@pytest.mark.parametrize("variant,width,depth", [("mu/8", 128, 4), ("S/16", 384, 12), ("B/16", 768, 12)])
def test_vit_variants(variant, width, depth):
    cfg = vit.parse_variant(variant)
    assert (cfg["width"], cfg["depth"]) == (width, depth)
    size = 2 * cfg["patch"]
    shapes = jax.eval_shape(lambda: vit.ViT(variant).init_with_output(
        jax.random.key(0), jnp.zeros((2, size, size, 3)))[0])
    assert shapes["patches"].shape == (2, 4, width)
    assert shapes["pooled"].shape == (2, width)


def test_vit_s16_param_count():
    params = jax.eval_shape(lambda: vit.ViT("S/16").init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    n = sum(x.size for x in jax.tree.leaves(params))
    assert 21.5e6 < n < 22.2e6  # ViT-S/16 without the class token/head: ~21.7M


@pytest.mark.parametrize("bad", ["X/16", "S", "S/0", "S/abc", ""])
def test_unknown_variant(bad):
    with pytest.raises(vit.UnknownVariantError, match="unknown ViT variant"):
        vit.parse_variant(bad)


def test_pooled_is_mean_of_patches_and_text_pools_at_eos():
    model = two_tower.TwoTower(vocab_size=50, max_len=8, embed_dim=16)
    batch = {"image": jax.random.normal(jax.random.key(1), (3, 16, 16, 3)),
             "tokens": jnp.array([[2, 7, 9, 3, 0, 0, 0, 0], [2, 5, 3, 0, 0, 0, 0, 0],
                                  [2, 5, 6, 7, 8, 9, 10, 3]]),
             "object_tokens": jnp.array([[[2, 7, 3], [2, 8, 3]]] * 3)}
    params = model.init(jax.random.key(0), batch)
    out = model.apply(params, batch)
    assert out["patch_embed"].shape == (3, 4, 16)
    np.testing.assert_allclose(out["image_embed"], out["patch_embed"].mean(1), rtol=1e-5, atol=1e-6)
    assert out["token_embed"].shape == (3, 8, 16) and out["text_embed"].shape == (3, 16)
    np.testing.assert_allclose(out["text_embed"][0], out["token_embed"][0, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["text_embed"][1], out["token_embed"][1, 2], rtol=1e-5, atol=1e-6)
    assert out["object_embed"].shape == (3, 2, 16)
    assert float(out["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-5)
    # Padding does not change a caption's embedding.
    longer = dict(batch, tokens=jnp.pad(batch["tokens"][:, :6], ((0, 0), (0, 2))))
    out2 = model.apply(params, longer)
    np.testing.assert_allclose(out2["text_embed"][:2], out["text_embed"][:2], rtol=1e-4, atol=1e-5)


def test_text_variants():
    assert text.parse_text_variant("S")["width"] == 256
    with pytest.raises(vit.UnknownVariantError):
        text.parse_text_variant("XL")


def test_conv_stem_keeps_the_patch_grid():
    out = jax.eval_shape(lambda: vit.ViT("mu/8", stem="conv").init_with_output(
        jax.random.key(0), jnp.zeros((2, 64, 64, 3)))[0])
    assert out["patches"].shape == (2, 64, 128)
    with pytest.raises(vit.UnknownVariantError, match="power-of-two"):
        jax.eval_shape(lambda: vit.ViT("mu/6", stem="conv").init(jax.random.key(0), jnp.zeros((1, 12, 12, 3))))


def test_space_to_depth_matches_a_numpy_loop():
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    out = np.asarray(vit.space_to_depth(jnp.asarray(x), 2))
    assert out.shape == (2, 2, 3, 12)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(out[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(2, 12))


def test_hmlp_stem_token_sees_only_its_own_patch():
    """Changing the pixels of one 8x8 patch changes that patch's stem output and no other."""
    stem = vit.HMLPStem(width=32, patch=8)
    x = np.random.default_rng(1).normal(size=(1, 24, 32, 3)).astype(np.float32)
    params = stem.init(jax.random.key(0), jnp.asarray(x))
    base = np.asarray(stem.apply(params, jnp.asarray(x)))
    assert base.shape == (1, 3, 4, 32)
    y = x.copy()
    y[0, 8:16, 16:24] += 1.0                                   # patch (1, 2)
    changed = np.abs(np.asarray(stem.apply(params, jnp.asarray(y))) - base).max(-1)[0]
    assert changed[1, 2] > 1e-3
    changed[1, 2] = 0
    assert changed.max() == 0
    # As the patch stem, a size that is not a whole number of patches drops the remainder.
    out = jax.eval_shape(lambda: vit.ViT("mu/8", stem="hmlp").init_with_output(
        jax.random.key(0), jnp.zeros((1, 70, 64, 3)))[0])
    assert out["patches"].shape == (1, 64, 128)
    with pytest.raises(vit.UnknownVariantError, match="power-of-two"):
        jax.eval_shape(lambda: vit.ViT("mu/6", stem="hmlp").init(jax.random.key(0), jnp.zeros((1, 12, 12, 3))))


def test_contrast_stem_matches_float64_numpy_and_ignores_the_colours_of_a_two_colour_patch():
    """The stem projects each patch's per-channel standardised pixels (float64 re-derivation);
    two scenes with the same layout and different colour pairs give the same tokens up to the
    sign of each channel's contrast."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 16, 24, 3)).astype(np.float32)
    stem = vit.ContrastStem(width=8, patch=8, eps=0.1)
    params = stem.init(jax.random.key(0), jnp.asarray(x))
    kernel = np.asarray(params["params"]["embedding"]["kernel"], np.float64)
    bias = np.asarray(params["params"]["embedding"]["bias"], np.float64)
    want = np.zeros((2, 2, 3, 8))
    for i in range(2):
        for j in range(3):
            pix = x[:, 8 * i:8 * i + 8, 8 * j:8 * j + 8].astype(np.float64).reshape(2, 64, 3)
            norm = (pix - pix.mean(1, keepdims=True)) / np.sqrt(pix.var(1, keepdims=True) + 0.01)
            want[:, i, j] = norm.reshape(2, 192) @ kernel + bias
    np.testing.assert_allclose(np.asarray(stem.apply(params, jnp.asarray(x))), want, rtol=1e-4, atol=1e-4)

    mask = np.zeros((1, 8, 8, 1), np.float32)
    mask[0, 2:6, 1:5] = 1.0                                    # a square inside one patch
    def paint(fg, bg):
        return jnp.asarray(bg + mask * (np.asarray(fg, np.float32) - bg))
    stem = vit.ContrastStem(width=8, patch=8, eps=1e-3)
    params = stem.init(jax.random.key(0), paint([1, 1, 1], np.zeros(3, np.float32)))
    red_on_blue = paint([2.0, -1.0, 0.5], np.array([-1.0, 1.5, -0.5], np.float32))
    green_on_grey = paint([-0.5, 2.0, 1.0], np.array([-1.5, 0.0, 0.0], np.float32))   # contrast signs +, +, +
    flipped = paint([0.0, -1.0, -1.0], np.array([1.0, 1.0, 1.0], np.float32))          # -, -, -
    apply = lambda im: np.asarray(stem.apply(params, im))
    np.testing.assert_allclose(apply(green_on_grey), apply(paint([3.0, 1.0, 2.0], np.zeros(3, np.float32))),
                               atol=1e-3)
    assert not np.allclose(apply(green_on_grey), apply(flipped), atol=1e-2)
    assert not np.allclose(apply(red_on_blue), apply(green_on_grey), atol=1e-2)
    # patch+contrast keeps the raw colours: the two same-sign scenes differ again.
    both = vit.ViT("mu/8", stem="patch+contrast")
    p2 = both.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    a = both.apply(p2, green_on_grey)["patches"]
    b = both.apply(p2, paint([3.0, 1.0, 2.0], np.zeros(3, np.float32)))["patches"]
    assert float(jnp.abs(a - b).max()) > 1e-2


def test_local_attention_mask_matches_a_brute_force_neighbourhood():
    h, w, r = 3, 4, 1
    mask = np.asarray(vit.local_attention_mask(h, w, r))[0, 0]
    expected = np.zeros((h * w, h * w), bool)
    for a in range(h * w):
        for b in range(h * w):
            expected[a, b] = abs(a // w - b // w) <= r and abs(a % w - b % w) <= r
    np.testing.assert_array_equal(mask, expected)
    assert mask[0].sum() == 4 and mask[5].sum() == 9   # corner vs interior cell


def test_parse_radii():
    assert vit.parse_radii("1", 3) == [1, 1, 1]
    assert vit.parse_radii("1,-1,0", 3) == [1, -1, 0]
    for bad in ("1,2", "a", "1,,2"):
        with pytest.raises(vit.UnknownVariantError, match="attention radius"):
            vit.parse_radii(bad, 3)


def test_local_attention_limits_the_receptive_field():
    """With radius 0 in every block a patch's output depends on its own pixels only;
    with radius 1 in one block it also sees its neighbours, and nothing further."""
    images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3))   # 4x4 grid of 8x8 patches
    changed = images.at[0, :8, :8].add(1.0)                         # perturb patch (0, 0)

    def moved(radius):
        model = vit.ViT("mu/8", attention_radius=radius)
        params = model.init(jax.random.key(0), images)
        a = model.apply(params, images)["patches"][0]
        b = model.apply(params, changed)["patches"][0]
        return np.asarray(jnp.abs(a - b).max(-1)).reshape(4, 4) > 1e-6

    assert moved("0").sum() == 1 and moved("0")[0, 0]
    one_hop = moved("1,0,0,0")
    np.testing.assert_array_equal(np.argwhere(one_hop), [[0, 0], [0, 1], [1, 0], [1, 1]])
    assert moved("").all()   # global attention: every patch sees the change


def test_object_prompts_encoded_once_match_the_plain_path():
    """object_prompt_slots: each distinct prompt through the tower once gives the plain
    path's embeddings and gradients; with more distinct prompts than slots the plain path runs."""
    r = np.random.default_rng(0)
    words = r.integers(4, 64, (5, 6)).astype(np.int32)       # 5 prompts; empty slots all padding
    ids = r.integers(0, 5, (8, 4))
    ids[:, 3] = -1
    obj = np.where(ids[..., None] >= 0, words[np.maximum(ids, 0)], 0).astype(np.int32)
    batch = {"image": jnp.asarray(r.normal(size=(8, 16, 16, 3)), jnp.float32),
             "tokens": jnp.asarray(r.integers(4, 64, (8, 10)), jnp.int32),
             "object_tokens": jnp.asarray(obj)}
    params = two_tower.TwoTower(vocab_size=64, max_len=10).init(jax.random.key(0), batch)["params"]

    def embed_and_grad(slots):
        m = two_tower.TwoTower(vocab_size=64, max_len=10, object_prompt_slots=slots)
        f = lambda p: m.apply({"params": p}, batch)["object_embed"]  # noqa: E731
        return jax.jit(f)(params), jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(f(p)))))(params)

    want, want_g = embed_and_grad(0)
    for slots in (6, 3):                         # 6 distinct prompts: fits; 3: falls back
        got, got_g = embed_and_grad(slots)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # Over the whole gradient: leaves whose true gradient cancels to ~1e-7 differ in noise.
        diff = sum(float(np.sum((np.asarray(a) - b) ** 2))
                   for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)))
        norm = sum(float(np.sum(np.asarray(b) ** 2)) for b in jax.tree.leaves(want_g))
        assert np.sqrt(diff) <= 1e-4 * np.sqrt(norm), (slots, np.sqrt(diff / norm))
