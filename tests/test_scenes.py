"""Captioned scenes: generator invariants/variety and the offline TFDS builder.

The world: 8 shape classes (ids 1..8, 0 = background) on textured backgrounds,
captions naming some of the objects. Masks are evaluation-only ground truth.
"""
import collections
import re

import numpy as np
import pytest

from mgca_jax.data import scenes
from mgca_jax.data.scenes import CLASS_IDS, CLASS_NAMES, PLURALS, caption_class_words, make_example

N_SAMPLES = 300


@pytest.fixture(scope="module")
def samples():
    return [make_example(0, i, 64) for i in range(N_SAMPLES)]


def test_class_tables():
    assert CLASS_NAMES == ("circle", "square", "triangle", "star", "ring", "cross",
                           "diamond", "crescent")
    assert [CLASS_IDS[n] for n in CLASS_NAMES] == list(range(1, 9))
    assert set(PLURALS) == set(CLASS_NAMES) and PLURALS["cross"] == "crosses"
    assert len(scenes.COLOURS) >= 8


def test_determinism():
    a, b = make_example(3, 17, 64), make_example(3, 17, 64)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert a["caption"] == b["caption"] and a["objects"] == b["objects"]
    # Order independence: generating other examples in between changes nothing.
    make_example(3, 16, 64)
    c = make_example(3, 17, 64)
    np.testing.assert_array_equal(a["image"], c["image"])
    d = make_example(3, 18, 64)
    e = make_example(4, 17, 64)
    assert not np.array_equal(a["image"], d["image"])
    assert not np.array_equal(a["image"], e["image"])


@pytest.mark.parametrize("size", [32, 64, 96])
def test_shapes_and_dtypes(size):
    ex = make_example(1, 2, size)
    assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (size, size) and ex["mask"].dtype == np.uint8
    assert isinstance(ex["caption"], str) and ex["caption"]


def test_masks_captions_consistent(samples):
    for ex in samples:
        mask, caption = ex["mask"], ex["caption"]
        assert mask.max() <= 8
        present = {CLASS_NAMES[v - 1] for v in np.unique(mask) if v > 0}
        assert 1 <= len(ex["objects"]) <= 4
        # Every drawn object is visible in the mask; nothing else is.
        assert present == set(ex["objects"]), (ex["objects"], present)
        for name in ex["objects"]:
            assert (mask == CLASS_IDS[name]).sum() > 0
        mentioned = caption_class_words(caption)
        assert mentioned, caption  # at least one object named
        assert mentioned <= present, (caption, present)
        assert mentioned == set(ex["named"])
        assert caption == caption.lower()


def test_objects_mostly_visible(samples):
    # Each instance keeps >= 55% of its pixels; per class, the mask area must
    # therefore be a sizeable part of the instances' nominal areas.
    for ex in samples:
        for name, diam in zip(ex["objects"], ex["diameters"]):
            assert (ex["mask"] == CLASS_IDS[name]).sum() >= 0.1 * diam * diam


def test_caption_words_unambiguous(samples):
    """Object words are exact class names/plurals; no other word contains one."""
    object_words = set(CLASS_NAMES) | set(PLURALS.values())
    extra = [make_example(5, i, 64)["caption"] for i in range(700)]
    for caption in [s["caption"] for s in samples] + extra:
        for word in re.findall(r"[a-z]+", caption.lower()):
            if word in object_words:
                continue
            assert not any(n in word for n in CLASS_NAMES), (word, caption)


def test_variety(samples):
    classes = collections.Counter(o for s in samples for o in s["objects"])
    assert set(classes) == set(CLASS_NAMES)
    counts = collections.Counter(len(s["objects"]) for s in samples)
    assert len(counts) >= 3 and counts[1] > 0 and counts[2] > 0
    diam = np.array([d for s in samples for d in s["diameters"]])
    assert (diam < 14).sum() >= 10 and (diam > 28).sum() >= 10  # small and large objects
    backgrounds = collections.Counter(s["background"] for s in samples)
    assert set(backgrounds) == set(scenes.BACKGROUNDS)
    forms = collections.Counter(s["template"] for s in samples)
    assert len(forms) >= 8
    captions = [s["caption"] for s in samples]
    assert len(set(captions)) > 0.7 * len(captions)
    # Plurals when several objects of one kind are named.
    assert any(p in c.split() or p + "!!" in c for c in captions for p in PLURALS.values())
    # Not every caption names every object class present.
    assert any(set(s["named"]) < set(s["objects"]) for s in samples)
    # Colour is a cue, not the class: each class mostly shows its typical colour,
    # but also several others (shape must decide those).
    colours = collections.defaultdict(collections.Counter)
    for s in samples:
        for name, colour in zip(s["objects"], s["colours"]):
            colours[name][colour] += 1
    for n in CLASS_NAMES:
        total = sum(colours[n].values())
        typical = colours[n][scenes.TYPICAL_COLOUR[n]] / total
        assert 0.35 < typical < 0.85, (n, colours[n])
        assert len(colours[n]) >= 4, (n, colours[n])


def test_objects_contrast_with_background(samples):
    # The mean colour inside each class region differs from the image mean
    # outside the objects (rough check that shapes are not camouflaged).
    for ex in samples[:100]:
        img = ex["image"].astype(np.float32)
        bg = ex["mask"] == 0
        if bg.sum() < 50:
            continue
        bg_mean = img[bg].mean(0)
        for v in np.unique(ex["mask"]):
            if v == 0:
                continue
            region = img[ex["mask"] == v].mean(0)
            assert np.linalg.norm(region - bg_mean) > 30


# ---------------------------------------------------------------------------
# TFDS builder.
# ---------------------------------------------------------------------------

def _read_split(builder, split):
    import tensorflow_datasets as tfds
    out = {}
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
        out[int(ex["id"])] = (ex["image"], ex["mask"], ex["caption"].decode())
    return out


@pytest.fixture(scope="module")
def tiny_builders(tmp_path_factory):
    from mgca_jax.data.scenes_builder import build
    a = build(str(tmp_path_factory.mktemp("scenes_a")), "tiny")
    b = build(str(tmp_path_factory.mktemp("scenes_b")), "tiny")
    return a, b


def test_builder_tiny_splits(tiny_builders):
    builder, _ = tiny_builders
    assert builder.name == "mgca_scenes"
    assert str(builder.version) == "1.2.0"
    assert builder.info.splits["train"].num_examples == 256
    assert builder.info.splits["validation"].num_examples == 64
    train = _read_split(builder, "train")
    assert sorted(train) == list(range(256))
    image, mask, caption = train[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert mask.shape == (32, 32, 1) and mask.max() <= 8
    # Stored examples equal the generator's (PNG round trip is lossless).
    from mgca_jax.data.scenes_builder import split_seed
    ref = make_example(split_seed(0, "train"), 0, 32)
    np.testing.assert_array_equal(image, ref["image"])
    np.testing.assert_array_equal(mask[..., 0], ref["mask"])
    assert caption == ref["caption"]


def test_builder_deterministic_and_splits_differ(tiny_builders):
    a, b = tiny_builders
    for split in ("train", "validation"):
        ea, eb = _read_split(a, split), _read_split(b, split)
        assert ea.keys() == eb.keys()
        for k in ea:
            np.testing.assert_array_equal(ea[k][0], eb[k][0])
            np.testing.assert_array_equal(ea[k][1], eb[k][1])
            assert ea[k][2] == eb[k][2]
    train, val = _read_split(a, "train"), _read_split(a, "validation")
    assert not np.array_equal(train[0][0], val[0][0])
    assert sum(train[k][2] == val[k][2] for k in val) < len(val) // 2


def test_builder_is_cached_and_overrides(tmp_path):
    from mgca_jax.data.scenes_builder import MgcaScenes, ScenesConfig, build
    builder = build(str(tmp_path), "tiny", num_train=8, num_validation=4, seed=3)
    assert builder.builder_config.name != "tiny"
    assert builder.info.splits["train"].num_examples == 8
    assert builder.info.splits["validation"].num_examples == 4
    again = build(str(tmp_path), "tiny", num_train=8, num_validation=4, seed=3)
    assert again.is_prepared()
    custom = MgcaScenes(config=ScenesConfig(name="custom", image_size=16, num_train=4,
                                            num_validation=2, seed=1),
                        data_dir=str(tmp_path))
    custom.download_and_prepare()
    ex = _read_split(custom, "validation")
    assert sorted(ex) == [0, 1] and ex[0][0].shape == (16, 16, 3)
