"""Benchmark readers: fixture trees in the real layouts, label mappings, layout errors."""
import numpy as np
import pytest
from PIL import Image

from mgca_jax.evaluation import benchmarks as B

KEYS = ["voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k"]

# evaluation label counts, background included where the dataset has one
NUM_CLASSES = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
               "coco_stuff": 171, "cityscapes": 19, "ade20k": 150}
HAS_BG = {"voc21": True, "voc20": False, "context60": True, "context59": False,
          "coco_object": True, "coco_stuff": False, "cityscapes": False, "ade20k": False}

# raw value in the file -> evaluation label, written out by hand for the planted probe values
EXPECTED = {
    "voc21": {0: 0, 1: 1, 2: 2, 19: 19, 20: 20, 255: 255},
    "voc20": {0: 255, 1: 0, 2: 1, 19: 18, 20: 19, 255: 255},
    "context60": {0: 0, 1: 1, 2: 2, 57: 57, 58: 58, 59: 59},
    "context59": {0: 255, 1: 0, 2: 1, 57: 56, 58: 57, 59: 58},
    "coco_object": {0: 1, 1: 2, 2: 3, 79: 80, 80: 0, 169: 0, 170: 0, 255: 0},
    "coco_stuff": {0: 0, 1: 1, 2: 2, 169: 169, 170: 170, 255: 255},
    "cityscapes": {0: 0, 1: 1, 2: 2, 17: 17, 18: 18, 255: 255},
    "ade20k": {0: 255, 1: 0, 2: 1, 148: 147, 149: 148, 150: 149},
}


def _rule(key, v):
    """The documented mapping, restated independently of the module's lookup tables."""
    if key in ("voc20", "context59", "ade20k"):
        return 255 if v in (0, 255) else v - 1
    if key == "coco_object":
        return v + 1 if v < 80 else 0
    return v


@pytest.mark.parametrize("key", KEYS)
def test_fixture_roundtrip(key, tmp_path):
    raw = B.make_fixture(key, tmp_path, num_images=2, size=(40, 56))
    spec = B.get_benchmark(key)
    assert spec.key == key
    assert spec.num_classes == NUM_CLASSES[key] == len(spec.label_names)
    assert spec.has_background == HAS_BG[key]
    assert ("background" in spec.class_names) is False
    assert B.count(key, tmp_path) == 2                    # the extra train image is not counted
    items = list(B.iterate(key, tmp_path))
    assert [n for n, _, _ in items] == list(raw)
    for name, img, lab in items:
        assert img.shape == (40, 56, 3) and img.dtype == np.uint8
        assert lab.shape == (40, 56)
        r = raw[name]
        for v, expected in EXPECTED[key].items():
            where = r == v
            assert where[0].any(), f"probe {v} not planted in row 0"
            assert (lab[where] == expected).all(), (key, v, np.unique(lab[where]))
        want = np.vectorize(lambda v: _rule(key, int(v)))(r)
        np.testing.assert_array_equal(lab, want)
        valid = lab[lab != 255]
        assert valid.size == 0 or valid.max() < spec.num_classes
    assert len(list(B.iterate(key, tmp_path, limit=1))) == 1


def test_class_lists():
    assert B.VOC_CLASSES[0] == "aeroplane" and B.VOC_CLASSES[-1] == "tvmonitor"
    assert B.get_benchmark("voc21").label_names[:2] == ("background", "aeroplane")
    assert len(B.CONTEXT59_CLASSES) == 59 and B.CONTEXT59_CLASSES[-1] == "wood"
    assert B.COCO_OBJECT_CLASSES[0] == "person" and B.COCO_OBJECT_CLASSES[-1] == "toothbrush"
    assert B.COCO_STUFF_CLASSES[80] == "banner" and B.COCO_STUFF_CLASSES[-1] == "wood"
    assert B.CITYSCAPES_CLASSES[0] == "road" and B.CITYSCAPES_CLASSES[-1] == "bicycle"
    assert B.ADE20K_CLASSES[0] == "wall" and B.ADE20K_CLASSES[-1] == "flag"
    for key in KEYS:
        names = B.get_benchmark(key).class_names
        assert len(set(names)) == len(names)
    assert sorted(B.list_benchmarks()) == sorted(KEYS)
    with pytest.raises(KeyError):
        B.get_benchmark("voc")


def test_cityscapes_names_include_city(tmp_path):
    B.make_fixture("cityscapes", tmp_path, num_images=3)
    names = [n for n, _, _ in B.iterate("cityscapes", tmp_path)]
    assert all("/" in n and n.split("/")[0] in n.split("/")[1] for n in names)


def test_dataset_folder_as_data_dir(tmp_path):
    B.make_fixture("ade20k", tmp_path)
    assert B.count("ade20k", tmp_path / "ade" / "ADEChallengeData2016") == 2


def _one_line_error(fn, *needles):
    with pytest.raises(B.BenchmarkLayoutError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg
    for n in needles:
        assert str(n) in msg, msg
    assert isinstance(ei.value, ValueError)
    return msg


@pytest.mark.parametrize("key", KEYS)
def test_missing_tree(key, tmp_path):
    spec = B.get_benchmark(key)
    expected = tmp_path / spec.root
    msg = _one_line_error(lambda: B.count(key, tmp_path), expected, "missing")
    assert msg.startswith(f"{key}: expected directory")


def test_missing_pieces_named(tmp_path):
    raw = B.make_fixture("voc21", tmp_path)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    first = next(iter(raw))
    (root / "SegmentationClass" / f"{first}.png").unlink()
    _one_line_error(lambda: list(B.iterate("voc21", tmp_path)), root / "SegmentationClass" / f"{first}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    _one_line_error(lambda: B.count("voc20", tmp_path), root / "ImageSets" / "Segmentation" / "val.txt")
    import shutil
    shutil.rmtree(root / "JPEGImages")
    _one_line_error(lambda: B.count("voc21", tmp_path), root / "JPEGImages")


def test_malformed_label_files(tmp_path):
    raw = B.make_fixture("ade20k", tmp_path)
    name = next(iter(raw))
    lp = tmp_path / "ade" / "ADEChallengeData2016" / "annotations" / "validation" / f"{name}.png"
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(lp)      # RGB label
    _one_line_error(lambda: list(B.iterate("ade20k", tmp_path)), lp, "single-channel")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(lp)         # wrong size
    _one_line_error(lambda: list(B.iterate("ade20k", tmp_path)), lp)
    lp.write_bytes(b"not a png")
    _one_line_error(lambda: list(B.iterate("ade20k", tmp_path)), lp)
