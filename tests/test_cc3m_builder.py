"""cc3m ingestion: planted bad samples in real webdataset shards -> TFDS + report."""
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from mgca_jax.data import cc3m_builder as C

# Small limits so the "huge" image stays tiny: 150*150 pixels max, resize to 64.
CFG = dict(max_short_side=64, min_side=32, max_pixels=150 * 150, max_aspect_ratio=10.0)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rgb(h, w, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, 1, 3))
    grad = np.linspace(0, 60, w)[None, :, None]
    return np.clip(base + grad + rng.integers(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)


def _encode(im, fmt="JPEG"):
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def _jpeg(h, w, seed):
    return _encode(Image.fromarray(_rgb(h, w, seed)))


def _rgba_png(h, w, seed):
    arr = np.concatenate([_rgb(h, w, seed) // 2, np.full((h, w, 1), 255, np.uint8)], axis=-1)
    arr[:, : w // 2, 3] = 0  # left half fully transparent -> white after compositing
    return _encode(Image.fromarray(arr, "RGBA"), "PNG")


def _sample(key, image=None, caption=None):
    s = {"__key__": key, "json": json.dumps({"key": key, "status": "success"})}
    if image is not None:
        s["jpg"] = image  # img2dataset always names the image .jpg
    if caption is not None:
        s["txt"] = caption
    return s


def _write_tar(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


# key -> (caption, expected (h, w) after resizing) for every sample that must be kept
KEPT = {
    "000000000": ("a red dog on a lawn", (64, 85)),       # 96x128 -> short side 64
    "000000001": ("small picture", (40, 48)),             # not resized
    "000000004": ("cmyk print scan", (64, 64)),           # converted_cmyk
    "000000005": ("black and white photo", (64, 96)),     # converted_grayscale
    "000010000": ("tabs\tand\nnewlines   collapsed", (50, 60)),
    "000010001": ("caf\u00e9 \u2014 unicode ok", (64, 64)),  # 100x100 -> 64
    "000010002": ("transparent logo", (64, 64)),          # converted_alpha
    "000010003": ("palette gif-like", (40, 40)),          # converted_palette
    "000020000": ("first of truncated tar", (40, 40)),
    "000020001": ("second of truncated tar", (40, 40)),
}
STORED_CAPTION = {k: " ".join(c.split()) for k, (c, _) in KEPT.items()}

TRAIN_DROPPED = {
    "corrupt_image": 2, "truncated_image": 1, "missing_caption": 1, "missing_image": 1,
    "unsupported_mode": 1, "too_small": 1, "too_large": 1, "extreme_aspect_ratio": 1,
    "empty_caption": 1, "non_utf8_caption": 1, "duplicate_key": 1,
}
TRAIN_CONVERTED = {"converted_alpha": 1, "converted_cmyk": 1, "converted_grayscale": 1,
                   "converted_palette": 1}


def _make_shards(root):
    root.mkdir(parents=True, exist_ok=True)
    gray = _encode(Image.fromarray(_rgb(64, 96, 5)[..., 0], "L"))
    cmyk = _encode(Image.fromarray(_rgb(64, 64, 4)).convert("CMYK"))
    good = _jpeg(96, 128, 0)
    _write_tar(root / "gcc-train-000000.tar", [
        _sample("000000000", good, KEPT["000000000"][0]),
        _sample("000000001", _jpeg(40, 48, 1), KEPT["000000001"][0]),
        _sample("000000002", np.random.default_rng(2).bytes(5000), "random bytes"),
        _sample("000000003", good[: len(good) // 2], "truncated download"),
        _sample("000000004", cmyk, KEPT["000000004"][0]),
        _sample("000000005", gray, KEPT["000000005"][0]),
        _sample("000000006", _jpeg(40, 40, 6)),                    # image without caption
        _sample("000000007", None, "caption without image"),
        _sample("000000008", b"<html><body>404 Not Found</body></html>", "error page"),
    ])
    u16 = _encode(Image.fromarray((_rgb(40, 40, 9)[..., 0].astype(np.uint16) * 257)), "PNG")
    palette = _encode(Image.fromarray(_rgb(40, 40, 3)).convert("P"), "PNG")
    _write_tar(root / "gcc-train-000001.tar", [
        _sample("000010000", _jpeg(50, 60, 10), KEPT["000010000"][0]),
        _sample("000010001", _jpeg(100, 100, 11), KEPT["000010001"][0].encode("utf-8")),
        _sample("000010002", _rgba_png(80, 80, 12), KEPT["000010002"][0]),
        _sample("000010003", palette, KEPT["000010003"][0]),
        _sample("000010004", u16, "sixteen bit"),
        _sample("000010005", _jpeg(20, 20, 13), "tiny"),
        _sample("000010006", _jpeg(160, 160, 14), "huge"),           # 25600 > 22500 px
        _sample("000010007", _jpeg(33, 400, 15), "banner"),          # ratio 12.1 > 10
        _sample("000010008", _jpeg(40, 40, 16), " \t\n "),
        _sample("000010009", _jpeg(40, 40, 17), b"caf\xe9 latin-1 \xff"),
        _sample("000010000", _jpeg(40, 40, 18), "same key again"),  # duplicate_key
    ])
    # A tar whose download was cut off in the middle of its third image.
    tar2 = root / "gcc-train-000002.tar"
    _write_tar(tar2, [
        _sample("000020000", _jpeg(40, 40, 20), KEPT["000020000"][0]),
        _sample("000020001", _jpeg(40, 40, 21), KEPT["000020001"][0]),
        _sample("000020002", _jpeg(90, 90, 22), "lost in truncation"),
    ])
    with tarfile.open(tar2) as t:
        cut = next(m for m in t.getmembers() if m.name == "000020002.jpg")
    with open(tar2, "r+b") as f:
        f.truncate(cut.offset_data + cut.size // 2)
    _write_tar(root / "gcc-train-000003.tar", [])  # empty shard
    _write_tar(root / "gcc-val-000000.tar", [
        _sample("900000000", _jpeg(40, 40, 30), "validation one"),
        _sample("900000001", _jpeg(70, 40, 31), "validation two"),
        _sample("900000002", _jpeg(40, 40, 32), ""),
    ])
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("cc3m")
    manual = _make_shards(base / "shards")
    builder = C.build(manual, base / "tfds", num_workers=2, **CFG)
    return manual, base, builder


def test_report_counts_every_planted_reason(built):
    _, _, builder = built
    report = builder.build_report()
    print("\n" + json.dumps(report, indent=1))
    print(C.format_report(report))
    assert report == C.load_build_report(builder.data_dir)
    assert report["settings"]["max_pixels"] == 150 * 150
    train = report["splits"]["train"]
    assert train["dropped_by_reason"] == TRAIN_DROPPED
    assert train["converted_by_reason"] == TRAIN_CONVERTED
    assert (train["seen"], train["kept"], train["dropped"], train["converted"]) == (22, 10, 12, 4)
    assert train["complete"] and train["num_tars"] == 4 and train["tar_read_errors"] == 1
    per_tar = train["per_tar"]
    assert [per_tar[f"gcc-train-00000{i}.tar"]["seen"] for i in range(4)] == [9, 11, 2, 0]
    assert [per_tar[f"gcc-train-00000{i}.tar"]["kept"] for i in range(4)] == [4, 4, 2, 0]
    assert [per_tar[f"gcc-train-00000{i}.tar"]["tar_read_error"] for i in range(4)] == [
        False, False, True, False]
    assert per_tar["gcc-train-000000.tar"]["dropped_by_reason"] == {
        "corrupt_image": 2, "missing_caption": 1, "missing_image": 1, "truncated_image": 1}
    for split in report["splits"].values():
        assert split["seen"] == split["kept"] + sum(split["dropped_by_reason"].values())
        assert split["converted"] == sum(split["converted_by_reason"].values())
    val = report["splits"]["validation"]
    assert (val["seen"], val["kept"], val["dropped_by_reason"]) == (3, 2, {"empty_caption": 1})
    text = C.format_report(report)
    for reason in list(TRAIN_DROPPED) + list(TRAIN_CONVERTED):
        assert reason in text
    assert "gcc-train-000002.tar" in text


def test_stored_examples_decode_to_rgb(built):
    _, _, builder = built
    assert builder.info.splits["train"].num_examples == 10
    assert builder.info.splits["validation"].num_examples == 2
    rows = {ex["key"].decode(): ex for ex in tfds_numpy(builder, "train")}
    assert set(rows) == set(KEPT)
    for key, ex in rows.items():
        img = ex["image"]
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3, key
        assert img.shape[:2] == KEPT[key][1], key
        assert ex["caption"].decode("utf-8") == STORED_CAPTION[key]
    gray = rows["000000005"]["image"].astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 3
    alpha = rows["000010002"]["image"]
    assert alpha[:, :24].min() >= 245          # transparent half composited on white
    assert alpha[:, 40:].mean() < 200          # opaque half keeps its colours
    val = sorted(ex["caption"].decode() for ex in tfds_numpy(builder, "validation"))
    assert val == ["validation one", "validation two"]


def tfds_numpy(builder, split):
    import tensorflow_datasets as tfds
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_dump_captions(built, tmp_path):
    _, base, builder = built
    out = tmp_path / "caps" / "train.txt"
    n = C.dump_captions(builder.data_dir, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == 10
    assert sorted(lines) == sorted(STORED_CAPTION.values())
    assert C.dump_captions(builder.data_dir, out, split="validation", limit=1) == 1
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_scan_tar_sequential_matches_parallel(built):
    manual = built[0]
    paths = sorted(str(p) for p in manual.glob("gcc-train-*.tar"))
    seq = sorted((os.path.basename(p), str(k), r) for p, k, _, r in C.scan_tars(paths, CFG, 1))
    par = sorted((os.path.basename(p), str(k), r) for p, k, _, r in C.scan_tars(paths, CFG, 3))
    assert seq == par and len(seq) == 22 + 1  # + the tar_read_error marker
    assert ("gcc-train-000002.tar", "None", C.TAR_READ_ERROR) in seq


@pytest.mark.parametrize("files,reason", [
    ({"jpg": "good", "txt": b"ok caption"}, "ok"),
    ({".JPG": "good", ".txt": b"ok caption", "json": b"{}"}, "ok"),
    ({"txt": b"caption only", "json": b"{}"}, "missing_image"),
    ({"jpg": "good", "json": b"{}"}, "missing_caption"),
    ({"jpg": "good", "txt": b"\xff\xfe bad"}, "non_utf8_caption"),
    ({"jpg": "good", "txt": b"  \n\t"}, "empty_caption"),
    ({"jpg": b"not an image at all", "txt": b"x"}, "corrupt_image"),
    ({"jpg": "truncated", "txt": b"x"}, "truncated_image"),
    ({"jpg": "tiny", "txt": b"x"}, "too_small"),
    ({"jpg": "wide", "txt": b"x"}, "extreme_aspect_ratio"),
    ({"jpg": "gray", "txt": b"x"}, "converted_grayscale"),
    ({"jpg": "cmyk", "txt": b"x"}, "converted_cmyk"),
    ({"jpg": "rgba", "txt": b"x"}, "converted_alpha"),
])
def test_validate_sample(files, reason):
    images = {
        "good": _jpeg(48, 64, 0), "tiny": _jpeg(31, 64, 1), "wide": _jpeg(40, 401, 2),
        "gray": _encode(Image.fromarray(_rgb(40, 40, 3)[..., 0], "L")),
        "cmyk": _encode(Image.fromarray(_rgb(40, 40, 4)).convert("CMYK")),
        "rgba": _rgba_png(40, 40, 5),
    }
    images["truncated"] = images["good"][: len(images["good"]) // 2]
    files = {k: images[v] if isinstance(v, str) else v for k, v in files.items()}
    example, got = C.validate_sample("k1", files, None)
    assert got == reason
    assert (example is not None) == (reason in C.KEEP_REASONS)
    if example is not None:
        im = Image.open(io.BytesIO(example["image"]))
        assert im.format == "JPEG" and im.mode == "RGB"
        assert example["key"] == "k1" and example["caption"]


def test_validate_sample_limits():
    big = _jpeg(120, 130, 0)
    assert C.validate_sample("k", {"jpg": big, "txt": b"x"}, {"max_pixels": 120 * 129})[1] == "too_large"
    ex, reason = C.validate_sample("k", {"jpg": big, "txt": b"x"}, C.ScanConfig(max_short_side=0))
    assert reason == "ok" and Image.open(io.BytesIO(ex["image"])).size == (130, 120)
    ex, _ = C.validate_sample("k", {"jpg": big, "txt": b"x"}, C.ScanConfig(max_short_side=60))
    assert Image.open(io.BytesIO(ex["image"])).size == (65, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(_rgb(40, 60, 1)).save(buf, format="JPEG", exif=exif.tobytes())
    ex, reason = C.validate_sample("k", {"jpg": buf.getvalue(), "txt": b"x"}, None)
    assert reason == "ok" and Image.open(io.BytesIO(ex["image"])).size == (40, 60)


def test_build_missing_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        C.build(tmp_path / "no_such_dir", tmp_path / "tfds")


def _run_cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "mgca_jax.data.cc3m_builder", *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_cli_missing_manual_dir(tmp_path):
    missing = tmp_path / "no_such_dir"
    proc = _run_cli(f"--manual_dir={missing}", f"--data_dir={tmp_path / 'tfds'}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], proc.stderr
    assert not (tmp_path / "tfds").exists()


def test_cli_dir_without_train_shards(tmp_path, capsys):
    (tmp_path / "shards").mkdir()
    _write_tar(tmp_path / "shards" / "gcc-val-000000.tar", [])
    assert C.main([f"--manual_dir={tmp_path / 'shards'}", f"--data_dir={tmp_path / 'tfds'}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "shards") in err[0] and "gcc-train-" in err[0]


def test_cli_builds_array_record_and_prints_table(built, tmp_path, capsys):
    manual = built[0]
    caps = tmp_path / "caps.txt"
    rc = C.main([f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}",
                 "--max_short_side=64", "--max_pixels=22500", "--num_workers=1",
                 "--file_format=array_record", f"--captions_out={caps}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "converted_cmyk" in out and "tar errors" in out
    assert sorted(caps.read_text(encoding="utf-8").splitlines()) == sorted(STORED_CAPTION.values())
    config = C.config_with_overrides("default", max_short_side=64, max_pixels=22500)
    assert config.name == "default_max_short_side64_max_pixels22500"
    builder = C.Cc3m(config=config, data_dir=str(tmp_path / "tfds"))
    assert builder.is_prepared()
    assert builder.info.file_format.value == "array_record"
    assert builder.build_report()["splits"]["train"]["dropped_by_reason"] == TRAIN_DROPPED


def test_short_side_256_build_is_a_config_the_trainer_opens(tmp_path):
    """`--max_short_side=256` builds the registered `short256` config (not a derived name),
    which `config.data.config_name=short256` opens; images keep their aspect ratio."""
    import ml_collections
    from mgca_jax.data import input_pipeline
    assert C.config_with_overrides("default", max_short_side=256) == "short256"
    assert C.config_with_overrides("short256", max_short_side=512) == "default"
    assert C.config_with_overrides("short256", max_short_side=128).name == "short256_max_short_side128"
    manual = tmp_path / "shards"
    manual.mkdir()
    _write_tar(manual / "gcc-train-000000.tar", [
        _sample("000000000", _jpeg(300, 400, 40), "a wide photo"),     # -> 256 x 341
        _sample("000000001", _jpeg(100, 120, 41), "a small photo"),    # kept as is
    ])
    rc = C.main([f"--manual_dir={manual}", f"--data_dir={tmp_path / 'tfds'}",
                 "--max_short_side=256", "--num_workers=1"])
    assert rc == 0
    assert (tmp_path / "tfds" / "cc3m" / "short256").is_dir()
    config = ml_collections.ConfigDict(dict(
        data_dir=str(tmp_path / "tfds"), data=dict(name="cc3m", config_name="short256")))
    builder = input_pipeline.get_builder(config)
    shapes = {ex["key"].decode(): ex["image"].shape[:2] for ex in tfds_numpy(builder, "train")}
    assert shapes == {"000000000": (256, 341), "000000001": (100, 120)}
    assert builder.build_report()["settings"]["max_short_side"] == 256
