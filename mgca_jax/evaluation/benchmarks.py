"""Readers for the eight zero-shot segmentation benchmarks (TCL's unified set).

Each benchmark is described by data (a :class:`Benchmark` spec): where its
images and labels live under the data root, which split file lists the
images, its class names and how raw label values map to evaluation labels.
Layouts, mappings and names follow mmsegmentation 0.x's dataset classes, as
TCL's public configs (kakaobrain/tcl) use them:

* voc21 / voc20: ``VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png}``,
  split ``ImageSets/Segmentation/val.txt``; bg + 20 (identity) / 20 (reduce_zero_label).
* context60 / context59: ``VOCdevkit/VOC2010/{JPEGImages, SegmentationClassContext}``,
  split ``ImageSets/SegmentationContext/val.txt``; bg + 59 (identity) / 59 (reduce_zero_label).
* coco_object: ``coco_stuff164k/{images/val2017/*.jpg, annotations/val2017/*_instanceTrainIds.png}``;
  bg + 80; thing id t (0..79) -> t + 1, every other value (stuff ids, 255) -> 0.
* coco_stuff: ``coco_stuff164k/... *_labelTrainIds.png``; 171 (identity).
* cityscapes: ``cityscapes/{leftImg8bit/val/<city>/*_leftImg8bit.png,
  gtFine/val/<city>/*_gtFine_labelTrainIds.png}``; 19 (identity).
* ade20k: ``ade/ADEChallengeData2016/{images/validation/*.jpg, annotations/validation/*.png}``;
  150 (reduce_zero_label).

Label 255 is "ignore" everywhere. ``reduce_zero_label`` is mmseg's: 0 -> 255,
v -> v - 1 for 1..254, 255 stays 255.

Class names are mmseg's lists, unchanged (as TCL uses them; GroupViT renames a
few VOC/Context names, e.g. 'diningtable' -> 'table', 'pottedplant' -> 'plant',
'tvmonitor' -> 'monitor'). ADE20K keeps mmseg's ``'bed '`` with its trailing
space. For datasets with a background class ``class_names`` excludes it;
``label_names`` is the full id -> name list including "background" at id 0.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

__all__ = [
    "BenchmarkLayoutError", "Benchmark", "BENCHMARKS", "LABEL_MAPPINGS", "get_benchmark",
    "list_benchmarks", "list_samples", "iterate", "count", "load_label", "load_image", "make_fixture",
    "VOC_CLASSES", "CONTEXT59_CLASSES", "COCO_OBJECT_CLASSES", "COCO_STUFF_CLASSES",
    "CITYSCAPES_CLASSES", "ADE20K_CLASSES", "IGNORE_INDEX",
]

IGNORE_INDEX = 255


class BenchmarkLayoutError(ValueError):
    """The on-disk layout of a benchmark is missing or malformed (one-line message)."""


# --------------------------------------------------------------------------- class names (mmseg)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# mmseg PascalContextDataset59 (alphabetical; PascalContextDataset = "background" + these).
CONTEXT59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)

# mmseg COCOStuffDataset (164k: train ids 0..170). The first 80 are the COCO things,
# which are also the COCO-Object classes (after "background").
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
    # stuff (ids 80..170)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain",
    "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof",
    "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)

COCO_OBJECT_CLASSES = COCO_STUFF_CLASSES[:80]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)

# mmseg ADE20KDataset, verbatim (note 'bed ' with a trailing space, as in mmseg).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


# --------------------------------------------------------------------------- label mappings (data)

def _lut(pairs: dict[int, int], default: int | None = None) -> np.ndarray:
    """256-entry uint8 lookup table; values not in ``pairs`` map to themselves or ``default``."""
    lut = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    lut.setflags(write=False)
    return lut


LABEL_MAPPINGS: dict[str, np.ndarray] = {
    # raw ids are already the evaluation ids (255 = ignore).
    "identity": _lut({}),
    # mmseg reduce_zero_label: 0 ("other"/background) -> 255, v -> v-1, 255 stays 255.
    "reduce_zero_label": _lut({0: 255, **{v: v - 1 for v in range(1, 255)}}),
    # COCO-Object from *_instanceTrainIds.png: things 0..79 -> 1..80, everything else
    # (stuff ids and 255) -> 0 = background.
    "coco_object": _lut({v: v + 1 for v in range(80)}, default=0),
}


# --------------------------------------------------------------------------- specs

@dataclasses.dataclass(frozen=True)
class Benchmark:
    """Static description of one benchmark. Paths are relative to ``data_dir/root``."""

    key: str
    title: str
    class_names: tuple[str, ...]      # excluding background
    has_background: bool               # label 0 = background (scored)
    root: str                          # dataset folder under the user's data dir
    img_dir: str
    ann_dir: str
    img_suffix: str
    seg_suffix: str
    label_mapping: str                 # key of LABEL_MAPPINGS
    split_file: str | None = None      # list of names; None: every image under img_dir
    recursive: bool = False            # images sit in sub-folders (cityscapes cities)
    expected_count: int | None = None  # size of the official split, for sanity checks
    fixture_raw_ids: tuple[int, ...] = ()  # raw label values the real files contain

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + (1 if self.has_background else 0)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Name of every evaluation label id 0..num_classes-1 (with "background" first if any)."""
        return (("background",) if self.has_background else ()) + self.class_names

    @property
    def lut(self) -> np.ndarray:
        return LABEL_MAPPINGS[self.label_mapping]


_VOC = dict(root="VOCdevkit/VOC2012", img_dir="JPEGImages", ann_dir="SegmentationClass",
            img_suffix=".jpg", seg_suffix=".png", split_file="ImageSets/Segmentation/val.txt",
            expected_count=1449, fixture_raw_ids=tuple(range(21)) + (255,))
_CONTEXT = dict(root="VOCdevkit/VOC2010", img_dir="JPEGImages", ann_dir="SegmentationClassContext",
                img_suffix=".jpg", seg_suffix=".png", split_file="ImageSets/SegmentationContext/val.txt",
                expected_count=5105, fixture_raw_ids=tuple(range(60)))
_COCO = dict(root="coco_stuff164k", img_dir="images/val2017", ann_dir="annotations/val2017",
             img_suffix=".jpg", expected_count=5000)

BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in (
    Benchmark("voc21", "PASCAL VOC 2012 val (with background)", VOC_CLASSES, True,
              label_mapping="identity", **_VOC),
    Benchmark("voc20", "PASCAL VOC 2012 val (no background)", VOC_CLASSES, False,
              label_mapping="reduce_zero_label", **_VOC),
    Benchmark("context60", "PASCAL Context val (with background)", CONTEXT59_CLASSES, True,
              label_mapping="identity", **_CONTEXT),
    Benchmark("context59", "PASCAL Context val (no background)", CONTEXT59_CLASSES, False,
              label_mapping="reduce_zero_label", **_CONTEXT),
    Benchmark("coco_object", "COCO-Object val2017", COCO_OBJECT_CLASSES, True,
              seg_suffix="_instanceTrainIds.png", label_mapping="coco_object",
              fixture_raw_ids=tuple(range(171)) + (255,), **_COCO),
    Benchmark("coco_stuff", "COCO-Stuff-164k val2017", COCO_STUFF_CLASSES, False,
              seg_suffix="_labelTrainIds.png", label_mapping="identity",
              fixture_raw_ids=tuple(range(171)) + (255,), **_COCO),
    Benchmark("cityscapes", "Cityscapes val", CITYSCAPES_CLASSES, False, root="cityscapes",
              img_dir="leftImg8bit/val", ann_dir="gtFine/val", img_suffix="_leftImg8bit.png",
              seg_suffix="_gtFine_labelTrainIds.png", label_mapping="identity", recursive=True,
              expected_count=500, fixture_raw_ids=tuple(range(19)) + (255,)),
    Benchmark("ade20k", "ADE20K val (SceneParsing)", ADE20K_CLASSES, False,
              root="ade/ADEChallengeData2016", img_dir="images/validation",
              ann_dir="annotations/validation", img_suffix=".jpg", seg_suffix=".png",
              label_mapping="reduce_zero_label", expected_count=2000,
              fixture_raw_ids=tuple(range(151))),
)}


def list_benchmarks() -> list[str]:
    return list(BENCHMARKS)


def get_benchmark(key: str) -> Benchmark:
    try:
        return BENCHMARKS[key]
    except KeyError:
        raise KeyError(f"unknown benchmark {key!r}; choose from {list_benchmarks()}") from None


# --------------------------------------------------------------------------- reading

def _root(spec: Benchmark, data_dir) -> Path:
    """The dataset folder: ``data_dir/spec.root``; a ``data_dir`` that already is the
    dataset folder (it contains ``img_dir``) is accepted too."""
    data_dir = Path(data_dir)
    full = data_dir / spec.root
    if not full.is_dir() and (data_dir / spec.img_dir).is_dir():
        return data_dir
    return full


def _fail(spec: Benchmark, what: str) -> BenchmarkLayoutError:
    return BenchmarkLayoutError(f"{spec.key}: {what}".replace("\n", " "))


def _need_dir(spec: Benchmark, path: Path) -> None:
    if not path.is_dir():
        why = "not a directory" if path.exists() else "missing"
        raise _fail(spec, f"expected directory {path} ({why})")


def list_samples(key: str, data_dir, check_files: bool = True) -> list[tuple[str, Path, Path]]:
    """``[(name, image_path, label_path), ...]`` in split-file order (sorted when the
    benchmark has no split file). With ``check_files`` every listed image and label
    must exist, else :class:`BenchmarkLayoutError` names the first missing file."""
    spec = get_benchmark(key)
    root = _root(spec, data_dir)
    _need_dir(spec, root)
    img_dir, ann_dir = root / spec.img_dir, root / spec.ann_dir
    _need_dir(spec, img_dir)
    _need_dir(spec, ann_dir)
    if spec.split_file is not None:
        split = root / spec.split_file
        if not split.is_file():
            raise _fail(spec, f"expected split file {split} (missing)")
        names = [ln.strip() for ln in split.read_text().splitlines() if ln.strip()]
        if not names:
            raise _fail(spec, f"split file {split} lists no images")
    else:
        pattern = ("**/*" if spec.recursive else "*") + spec.img_suffix
        names = sorted(p.relative_to(img_dir).as_posix()[: -len(spec.img_suffix)]
                       for p in img_dir.glob(pattern) if p.is_file())
        if not names:
            raise _fail(spec, f"no '*{spec.img_suffix}' images under {img_dir}")
    out = []
    for name in names:
        ip = img_dir / (name + spec.img_suffix)
        lp = ann_dir / (name + spec.seg_suffix)
        if check_files:
            if not ip.is_file():
                raise _fail(spec, f"expected image file {ip} (missing)")
            if not lp.is_file():
                raise _fail(spec, f"expected label file {lp} (missing)")
        out.append((name, ip, lp))
    return out


def count(key: str, data_dir) -> int:
    """Number of evaluation images found for ``key`` (after the layout checks)."""
    return len(list_samples(key, data_dir))


def load_label(key: str, path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a raw label PNG and apply the benchmark's label mapping (uint8, 255 = ignore)."""
    spec = get_benchmark(key)
    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except (OSError, ValueError) as e:
        raise _fail(spec, f"cannot read label file {path} ({type(e).__name__}: {e})") from None
    if raw.ndim != 2:
        raise _fail(spec, f"label file {path} is not single-channel (shape {raw.shape})")
    if shape is not None and raw.shape != tuple(shape):
        raise _fail(spec, f"label file {path} has size {raw.shape}, image has {tuple(shape)}")
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise _fail(spec, f"label file {path} holds values outside 0..255")
        raw = raw.astype(np.uint8)
    return spec.lut[raw]


def load_image(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def iterate(key: str, data_dir, limit: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(name, image uint8 (H, W, 3) RGB, label uint8 (H, W))`` with the label
    mapping applied (evaluation ids ``0..num_classes-1``, 255 = ignore)."""
    samples = list_samples(key, data_dir)
    if limit is not None:
        samples = samples[: max(int(limit), 0)]
    spec = get_benchmark(key)
    for name, ip, lp in samples:
        try:
            img = load_image(ip)
        except (OSError, ValueError) as e:
            raise _fail(spec, f"cannot read image file {ip} ({type(e).__name__}: {e})") from None
        yield name, img, load_label(key, lp, shape=img.shape[:2])


# --------------------------------------------------------------------------- fixtures

_CITIES = ("frankfurt", "lindau", "munster")


def make_fixture(key: str, root, num_images: int = 2, size: tuple[int, int] = (40, 56),
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Write a small fake tree for ``key`` under ``root`` in the real on-disk layout.

    Images are random JPEGs (PNGs for Cityscapes); labels are single-channel PNGs
    whose values are raw ids the real dataset uses. The first row of every
    label cycles deterministically through "probe" raw ids so that tests can
    check the mapping: the three smallest and three largest raw ids of the
    dataset (255 included where the dataset has it) and, where present, 79 and
    80 (last COCO thing / first COCO stuff id); pixel (0, 0) is always raw 0.
    The rest is random valid raw ids. Split datasets also get a ``train.txt``
    and one extra image that is *not* in ``val.txt``. Returns
    ``{name: raw_label}`` in reading order.
    """
    spec = get_benchmark(key)
    rng = np.random.default_rng(0) if rng is None else rng
    h, w = int(size[0]), int(size[1])
    base = Path(root) / spec.root
    img_dir, ann_dir = base / spec.img_dir, base / spec.ann_dir
    raw_ids = np.asarray(spec.fixture_raw_ids, dtype=np.uint8)
    probes = [int(v) for v in raw_ids[:3]] + [int(v) for v in raw_ids[-3:]]
    probes += [v for v in (79, 80) if v in set(raw_ids.tolist())]
    probes = np.asarray(list(dict.fromkeys(probes)), dtype=np.uint8)

    def name_for(i: int) -> str:
        if key == "cityscapes":
            city = _CITIES[i % len(_CITIES)]
            return f"{city}/{city}_{i:06d}_000019"
        if key in ("coco_object", "coco_stuff"):
            return f"{i + 139:012d}"
        if key == "ade20k":
            return f"ADE_val_{i + 1:08d}"
        return f"2008_{i:06d}"

    def write(name: str) -> np.ndarray:
        ip = img_dir / (name + spec.img_suffix)
        lp = ann_dir / (name + spec.seg_suffix)
        ip.parent.mkdir(parents=True, exist_ok=True)
        lp.parent.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(ip, format="JPEG" if spec.img_suffix.endswith(".jpg") else "PNG")
        lab = raw_ids[rng.integers(0, len(raw_ids), size=(h, w))]
        lab[0, :] = probes[np.arange(w) % len(probes)]
        Image.fromarray(np.ascontiguousarray(lab)).save(lp, format="PNG")
        return lab

    names = [name_for(i) for i in range(num_images)]
    labels = {n: write(n) for n in names}
    if spec.split_file is not None:
        extra = name_for(num_images)
        write(extra)
        split = base / spec.split_file
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("".join(n + "\n" for n in names))
        (split.parent / "train.txt").write_text(extra + "\n")
        return labels
    return {n: labels[n] for n in sorted(labels)}
