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


# --------------------------------------------------------------------------- independent layouts
# The official trees, written here from /work/shared/reference/eval-protocol.md (not with
# B.make_fixture): (dataset folder, image dir, label dir, image suffix, label suffix,
# split file or None, raw label values the files hold).
LAYOUTS = {
    "voc21": ("VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
              "ImageSets/Segmentation/val.txt", list(range(21)) + [255]),
    "context60": ("VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                  "ImageSets/SegmentationContext/val.txt", list(range(60))),
    "coco_object": ("coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                    "_instanceTrainIds.png", None, list(range(171)) + [255]),
    "coco_stuff": ("coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                   "_labelTrainIds.png", None, list(range(171)) + [255]),
    "cityscapes": ("cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                   "_gtFine_labelTrainIds.png", None, list(range(19)) + [255]),
    "ade20k": ("ade/ADEChallengeData2016", "images/validation", "annotations/validation", ".jpg",
               ".png", None, list(range(151))),
}
LAYOUTS["voc20"], LAYOUTS["context59"] = LAYOUTS["voc21"], LAYOUTS["context60"]
VAL_NAMES = {  # as the official files name them; split files list them out of sorted order
    "voc21": ["2008_000073", "2007_000033", "2011_003271"],
    "context60": ["2010_000108", "2008_000002", "2010_004994"],
    "coco_object": ["000000000139", "000000000285", "000000581781"],
    "cityscapes": ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000001_000019",
                   "munster/munster_000173_000019"],
    "ade20k": ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00002000"],
}
VAL_NAMES["voc20"], VAL_NAMES["context59"] = VAL_NAMES["voc21"], VAL_NAMES["context60"]
VAL_NAMES["coco_stuff"] = VAL_NAMES["coco_object"]
# Files that must not be read: other splits, and the sibling label files of the same image.
DISTRACTORS = {
    "voc21": ["JPEGImages/2007_000032.jpg", "SegmentationClass/2007_000032.png"],
    "context60": ["JPEGImages/2008_000008.jpg", "SegmentationClassContext/2008_000008.png"],
    "coco_object": ["images/train2017/000000000009.jpg", "annotations/val2017/{}_labelTrainIds.png"],
    "coco_stuff": ["images/train2017/000000000009.jpg", "annotations/val2017/{}_instanceTrainIds.png"],
    "cityscapes": ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                   "gtFine/val/{}_gtFine_labelIds.png", "gtFine/val/{}_gtFine_color.png"],
    "ade20k": ["images/training/ADE_train_00000001.jpg", "annotations/training/ADE_train_00000001.png"],
}
DISTRACTORS["voc20"], DISTRACTORS["context59"] = DISTRACTORS["voc21"], DISTRACTORS["context60"]


def _write_png(path, array, palette=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array)
    if palette:                        # VOC ships its masks as palette PNGs
        im = im.convert("P")
        im.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
        im.frombytes(array.tobytes())
    im.save(path, format="PNG")


def _write_official_tree(key, root, h=24, w=32):
    folder, img_dir, ann_dir, img_suffix, seg_suffix, split, values = LAYOUTS[key]
    base = root / folder
    rng = np.random.default_rng(7)
    raw = {}
    for i, name in enumerate(VAL_NAMES[key]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ip = base / img_dir / (name + img_suffix)
        ip.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(ip, format="JPEG" if img_suffix.endswith(".jpg") else "PNG")
        label = rng.choice(values, size=(h, w)).astype(np.uint8)
        label.reshape(-1)[: len(values)] = values          # every raw value occurs
        _write_png(base / ann_dir / (name + seg_suffix), label, palette=key.startswith("voc"))
        raw[name] = label
    for rel in DISTRACTORS[key]:
        p = base / rel.format(VAL_NAMES[key][0])
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".png" and "leftImg8bit" not in p.name:
            _write_png(p, np.full((h, w), 3, np.uint8))     # a wrong label file: all 3
        else:
            Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(p, format="JPEG" if p.suffix == ".jpg" else "PNG")
    if split:
        (base / split).parent.mkdir(parents=True, exist_ok=True)
        (base / split).write_text("\n".join(VAL_NAMES[key]) + "\n")
        (base / split).with_name("train.txt").write_text(DISTRACTORS[key][0].split("/")[-1][:-4] + "\n")
    return base, raw


@pytest.mark.parametrize("key", KEYS)
def test_reader_on_an_independently_written_tree(key, tmp_path):
    base, raw = _write_official_tree(key, tmp_path)
    folder, img_dir, _, img_suffix, _, split, _ = LAYOUTS[key]
    want_names = VAL_NAMES[key] if split else sorted(VAL_NAMES[key])
    assert B.count(key, tmp_path) == 3
    items = list(B.iterate(key, tmp_path))
    assert [n for n, _, _ in items] == want_names
    spec = B.get_benchmark(key)
    for name, img, lab in items:
        with Image.open(base / img_dir / (name + img_suffix)) as im:
            np.testing.assert_array_equal(img, np.asarray(im.convert("RGB")))
        want = np.vectorize(lambda v: _rule(key, int(v)))(raw[name])
        np.testing.assert_array_equal(lab, want)
        assert set(np.unique(lab)) - {255} <= set(range(spec.num_classes))
    # the dataset folder itself works as --data_dir too
    assert B.count(key, base) == 3
