"""TFDS builder `cc3m`: Conceptual Captions 3M from img2dataset webdataset shards.

Input (the tfds *manual dir*): the img2dataset output folder, i.e. tar shards
`gcc-train-000000.tar ... gcc-train-00436.tar` (optionally `gcc-val-*.tar` or
`gcc-validation-*.tar` for the validation split), each sample stored as
`KEY.jpg` (image) + `KEY.txt` (caption, UTF-8) + `KEY.json` (metadata, ignored).

Output features per example:

  image:   uint8 [H, W, 3], stored as a re-encoded JPEG; the short side is at
           most `max_short_side` (builder configs: `default` 512, `short256` 256,
           `original` 0 = never resize)
  caption: text (whitespace runs collapsed to one space, stripped)
  key:     text, the sample key inside its tar (e.g. "000004217")

Every sample is checked by the pure function `validate_sample`; a bad sample is
skipped and counted under its reason, never fatal. One reason per sample, the
first that applies in this order:

  dropped:
    missing_image          the sample has no image file (e.g. only .txt/.json)
    missing_caption        the sample has an image but no .txt
    non_utf8_caption       the caption bytes are not valid UTF-8
    empty_caption          the caption is empty or whitespace only
    corrupt_image          the image bytes cannot be identified or decoded
    truncated_image        the image data ends early ("image file is truncated")
    too_small              min(width, height) < min_side (default 32)
    too_large              width * height > max_pixels (default 8192 * 8192),
                           checked from the header, before decoding
    extreme_aspect_ratio   max(w, h) / min(w, h) > max_aspect_ratio (default 10)
    unsupported_mode       16-bit / 32-bit / float / LAB / HSV pixel modes
    duplicate_key          a key that already appeared earlier in the same tar
  kept but converted to RGB (and counted):
    converted_grayscale    modes "L" and "1" (channel replicated)
    converted_cmyk         mode "CMYK" (plain PIL conversion, no ICC profile)
    converted_alpha        any transparency (RGBA, LA, PA, RGBa, La, or a
                           palette/L/RGB image with a tRNS entry): composited
                           onto a WHITE background
    converted_palette      mode "P" without transparency
    converted_other        "RGBX" / "YCbCr"
  kept as is: "ok" (mode RGB)

All kept images are decoded, rotated upright by their EXIF orientation, resized
(bicubic; JPEGs are first DCT-downscaled by libjpeg for speed) and re-encoded
as baseline JPEG (`jpeg_quality`, default 90), so the stored bytes always decode
to 3-channel uint8 with tf.io.decode_jpeg.

A tar that cannot be read to its end (truncated or corrupt archive) is not
fatal either: the samples read before the error are kept/counted, the rest of
that tar is lost and the tar is flagged (`tar_read_error`) in the report.

Parallelism: tars are scanned independently by `scan_tar` in worker processes
(`num_workers`, default: CPU count), with bounded queues so memory stays small;
tfds writes (and shuffles) the examples in the main process. No Beam needed.

Build report: `build_report.json` in the builder's data dir, also returned by
`Cc3m.build_report()` / `load_build_report()`; per split: samples seen, kept,
dropped, converted, counts per reason (dropped / converted) and the same per tar.
Invariant: seen == kept + sum(dropped_by_reason.values()).

CLI:
  python -m mgca_jax.data.cc3m_builder --manual_dir=DIR --data_dir=DIR [--config=short256]
      [--num_workers=N] [--file_format=tfrecord|array_record] [--captions_out=FILE]
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
import zlib
from typing import Any, Iterable, Iterator

if __name__ == "__main__":
    # Run as `python -m`, this file is the module `__main__`, where tfds cannot place the
    # builder class in a package. Delegate to the importable module instead.
    from mgca_jax.data.cc3m_builder import main as _main
    sys.exit(_main())

from mgca_jax.quiet import import_tensorflow  # noqa: E402

import_tensorflow()  # without TensorFlow's C++ start-up lines
import tensorflow_datasets as tfds  # noqa: E402

# ---------------------------------------------------------------- reasons

OK = "ok"
MISSING_IMAGE = "missing_image"
MISSING_CAPTION = "missing_caption"
NON_UTF8_CAPTION = "non_utf8_caption"
EMPTY_CAPTION = "empty_caption"
CORRUPT_IMAGE = "corrupt_image"
TRUNCATED_IMAGE = "truncated_image"
TOO_SMALL = "too_small"
TOO_LARGE = "too_large"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
UNSUPPORTED_MODE = "unsupported_mode"
DUPLICATE_KEY = "duplicate_key"
CONVERTED_GRAYSCALE = "converted_grayscale"
CONVERTED_CMYK = "converted_cmyk"
CONVERTED_ALPHA = "converted_alpha"
CONVERTED_PALETTE = "converted_palette"
CONVERTED_OTHER = "converted_other"
# Not a sample reason: the one-off marker `scan_tar` yields when a tar cannot be
# read to its end (key and example are None; not counted as a sample).
TAR_READ_ERROR = "tar_read_error"

DROP_REASONS = (MISSING_IMAGE, MISSING_CAPTION, NON_UTF8_CAPTION, EMPTY_CAPTION,
                CORRUPT_IMAGE, TRUNCATED_IMAGE, TOO_SMALL, TOO_LARGE,
                EXTREME_ASPECT_RATIO, UNSUPPORTED_MODE, DUPLICATE_KEY)
CONVERT_REASONS = (CONVERTED_GRAYSCALE, CONVERTED_CMYK, CONVERTED_ALPHA,
                   CONVERTED_PALETTE, CONVERTED_OTHER)
KEEP_REASONS = (OK,) + CONVERT_REASONS

# Image member extensions in order of preference; the caption is `.txt`.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp")
CAPTION_EXTENSION = "txt"
SPLIT_PATTERNS = {
    "train": ("gcc-train-*.tar",),
    "validation": ("gcc-val-*.tar", "gcc-validation-*.tar"),
}
REPORT_FILENAME = "build_report.json"

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# ---------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class ScanConfig:
    """Validation / re-encoding settings (picklable, no tfds state)."""
    max_short_side: int = 512        # 0 or None: never resize
    min_side: int = 32
    max_pixels: int = 8192 * 8192
    max_aspect_ratio: float = 10.0
    jpeg_quality: int = 90


SCAN_FIELDS = tuple(f.name for f in dataclasses.fields(ScanConfig))


def as_scan_config(config: Any = None) -> ScanConfig:
    """A `ScanConfig` from None (defaults), a ScanConfig, a `Cc3mConfig` or any
    object / dict with (some of) the ScanConfig fields."""
    if isinstance(config, ScanConfig):
        return config
    if config is None:
        return ScanConfig()
    if isinstance(config, dict):
        values = {k: config[k] for k in SCAN_FIELDS if k in config}
    else:
        values = {k: getattr(config, k) for k in SCAN_FIELDS if hasattr(config, k)}
    return ScanConfig(**values)


@dataclasses.dataclass
class Cc3mConfig(tfds.core.BuilderConfig):
    """Builder config: the `ScanConfig` fields (they change the stored data)."""
    max_short_side: int = 512
    min_side: int = 32
    max_pixels: int = 8192 * 8192
    max_aspect_ratio: float = 10.0
    jpeg_quality: int = 90

    def scan_config(self) -> ScanConfig:
        return as_scan_config(self)


# ---------------------------------------------------------------- validation

def _decode_caption(raw: bytes) -> tuple[str | None, str]:
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None, NON_UTF8_CAPTION
    text = " ".join(text.replace("\ufeff", " ").split())
    if not text:
        return None, EMPTY_CAPTION
    return text, OK


def _image_error_reason(exc: BaseException) -> str:
    return TRUNCATED_IMAGE if "truncat" in str(exc).lower() else CORRUPT_IMAGE


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF must not drop an otherwise fine image
        return 1


def _to_rgb(im) -> tuple[Any, str]:
    """(RGB image, reason) for a loaded PIL image; (None, reason) if unsupported."""
    from PIL import Image
    mode = im.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in im.info):
        if mode == "La":
            im = im.convert("LA")
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB"), CONVERTED_ALPHA
    if mode == "RGB":
        return im, OK
    if mode in ("L", "1"):
        return im.convert("RGB"), CONVERTED_GRAYSCALE
    if mode == "CMYK":
        return im.convert("RGB"), CONVERTED_CMYK
    if mode == "P":
        return im.convert("RGB"), CONVERTED_PALETTE
    if mode in ("RGBX", "YCbCr"):
        return im.convert("RGB"), CONVERTED_OTHER
    return None, UNSUPPORTED_MODE


def _target_size(width: int, height: int, max_short_side: int | None) -> tuple[int, int] | None:
    short = min(width, height)
    if not max_short_side or short <= max_short_side:
        return None
    scale = max_short_side / short
    if width <= height:
        return int(max_short_side), max(1, round(height * scale))
    return max(1, round(width * scale)), int(max_short_side)


def process_image(data: bytes, config: Any = None) -> tuple[bytes | None, str]:
    """Validates, converts, resizes and re-encodes one image.

    Returns (JPEG bytes, reason) where reason is "ok" or a `converted_*` reason,
    or (None, drop reason). Never raises on bad image data.
    """
    from PIL import Image
    cfg = as_scan_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            width, height = im.size
        except Image.DecompressionBombError:
            return None, TOO_LARGE
        except Exception as exc:  # PIL raises many types on garbage input
            return None, _image_error_reason(exc)
        if width <= 0 or height <= 0:
            return None, CORRUPT_IMAGE
        if min(width, height) < cfg.min_side:
            return None, TOO_SMALL
        if width * height > cfg.max_pixels:
            return None, TOO_LARGE
        if max(width, height) / min(width, height) > cfg.max_aspect_ratio:
            return None, EXTREME_ASPECT_RATIO
        orientation = _exif_orientation(im)
        target = _target_size(width, height, cfg.max_short_side)
        try:
            if target is not None and im.format == "JPEG":
                im.draft(None, target)  # libjpeg DCT scaling, keeps size >= target
            im.load()
            im, reason = _to_rgb(im)
        except Image.DecompressionBombError:
            return None, TOO_LARGE
        except Exception as exc:
            return None, _image_error_reason(exc)
    if im is None:
        return None, reason
    if target is not None and im.size != target:
        im = im.resize(target, Image.Resampling.BICUBIC)
    transpose = {
        2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    if transpose is not None:
        im = im.transpose(transpose)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(cfg.jpeg_quality))
    return buf.getvalue(), reason


def _normalize_files(files: dict) -> dict[str, bytes]:
    return {str(k).lstrip(".").lower(): v for k, v in files.items()
            if not str(k).startswith("__")}


def validate_sample(key: str, files: dict, config: Any = None) -> tuple[dict | None, str]:
    """Checks one webdataset sample; pure (no I/O, no global state).

    Args:
      key: the sample key (e.g. "000004217").
      files: extension (e.g. "jpg", "txt", "json"; a leading dot is allowed) ->
        raw bytes; `__key__`-style entries are ignored.
      config: a `ScanConfig`, `Cc3mConfig`, dict or None (defaults).

    Returns:
      (example, reason): example is {"image": JPEG bytes, "caption": str,
      "key": key} with reason "ok" or a `converted_*` reason, or None with the
      drop reason (see the module docstring for the list and order).
    """
    files = _normalize_files(files)
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if image_ext is None:
        return None, MISSING_IMAGE
    if CAPTION_EXTENSION not in files:
        return None, MISSING_CAPTION
    caption, reason = _decode_caption(files[CAPTION_EXTENSION])
    if caption is None:
        return None, reason
    jpeg, reason = process_image(files[image_ext], config)
    if jpeg is None:
        return None, reason
    return {"image": jpeg, "caption": caption, "key": str(key)}, reason


# ---------------------------------------------------------------- tar scanning

def _split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset convention: key = path up to the first dot of the basename."""
    directory, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)
    if not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def scan_tar(path: str | os.PathLike, config: Any = None
             ) -> Iterator[tuple[str | None, dict | None, str]]:
    """Yields (key, example or None, reason) for every sample of one tar shard.

    Samples are groups of consecutive members sharing a key (webdataset). A key
    seen earlier in the same tar yields `duplicate_key`. If the archive cannot
    be read to its end, the samples read so far are yielded, the sample being
    read when the error happened is discarded, and a final
    (None, None, "tar_read_error") marker is yielded. Never raises on bad data.
    """
    cfg = as_scan_config(config)
    seen_keys: set[str] = set()
    current_key: str | None = None
    current: dict[str, bytes] = {}

    def finish(key, files):
        if key in seen_keys:
            return key, None, DUPLICATE_KEY
        seen_keys.add(key)
        example, reason = validate_sample(key, files, cfg)
        return key, example, reason

    try:
        with tarfile.open(os.fspath(path), mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = _split_member_name(member.name)
                if parts is None:
                    continue
                key, ext = parts
                if key != current_key:  # the previous sample is complete
                    if current_key is not None:
                        yield finish(current_key, current)
                    current_key, current = key, {}
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        print(f"warning: cannot read {os.fspath(path)} to its end ({type(exc).__name__}: {exc}); "
              f"the rest of this tar is skipped", file=sys.stderr, flush=True)
        yield None, None, TAR_READ_ERROR
        return
    if current_key is not None:
        yield finish(current_key, current)


def _scan_worker(tasks, results, config: ScanConfig, chunk: int) -> None:
    """Worker process: scans tars from `tasks` until None, sends chunks."""
    path = None
    try:
        while True:
            path = tasks.get()
            if path is None:
                break
            buf = []
            for item in scan_tar(path, config):
                buf.append(item)
                if len(buf) >= chunk:
                    results.put(("items", path, buf))
                    buf = []
            results.put(("items", path, buf))
    except BaseException:  # a bug, not bad data: report it to the parent
        results.put(("error", path, traceback.format_exc()))
    finally:
        results.put(("done", None, None))


def _mp_context():
    import multiprocessing
    # Workers only run tarfile + PIL (never TensorFlow / JAX), so fork is safe
    # and avoids re-importing the caller's __main__.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def scan_tars(paths: Iterable[str | os.PathLike], config: Any = None,
              num_workers: int | None = None, chunk: int = 64
              ) -> Iterator[tuple[str, str | None, dict | None, str]]:
    """Yields (tar path, key, example or None, reason) over all tars.

    With num_workers > 1 (default: CPU count) tars are scanned in worker
    processes, one tar per worker at a time; results are interleaved across
    tars, and at most ~4 chunks per worker are buffered (bounded memory).
    """
    paths = [os.fspath(p) for p in paths]
    cfg = as_scan_config(config)
    workers = min(int(num_workers or os.cpu_count() or 1), len(paths))
    if workers <= 1:
        for path in paths:
            for key, example, reason in scan_tar(path, cfg):
                yield path, key, example, reason
        return
    ctx = _mp_context()
    tasks = ctx.Queue()
    results = ctx.Queue(maxsize=4 * workers)
    for path in paths:
        tasks.put(path)
    for _ in range(workers):
        tasks.put(None)
    procs = [ctx.Process(target=_scan_worker, args=(tasks, results, cfg, chunk), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        done = 0
        while done < workers:
            try:
                kind, path, payload = results.get(timeout=2.0)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"cc3m scan worker died (exit codes {dead})") from None
                continue
            if kind == "items":
                for key, example, reason in payload:
                    yield path, key, example, reason
            elif kind == "error":
                raise RuntimeError(f"cc3m scan worker failed on {path}:\n{payload}")
            else:
                done += 1
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)


# ---------------------------------------------------------------- report

def _empty_counts() -> dict:
    return {"seen": 0, "kept": 0, "dropped": 0, "converted": 0,
            "dropped_by_reason": {}, "converted_by_reason": {}}


class SplitStats:
    """Accumulates the report of one split (main process only)."""

    def __init__(self, tar_names: Iterable[str]):
        self.total = _empty_counts()
        self.per_tar = {name: dict(_empty_counts(), tar_read_error=False) for name in tar_names}
        self.tar_read_errors = 0
        self.complete = False

    def add(self, tar_name: str, reason: str) -> None:
        tar = self.per_tar.setdefault(tar_name, dict(_empty_counts(), tar_read_error=False))
        if reason == TAR_READ_ERROR:
            if not tar["tar_read_error"]:
                tar["tar_read_error"] = True
                self.tar_read_errors += 1
            return
        for counts in (self.total, tar):
            counts["seen"] += 1
            if reason in KEEP_REASONS:
                counts["kept"] += 1
                if reason != OK:
                    counts["converted"] += 1
                    d = counts["converted_by_reason"]
                    d[reason] = d.get(reason, 0) + 1
            else:
                counts["dropped"] += 1
                d = counts["dropped_by_reason"]
                d[reason] = d.get(reason, 0) + 1

    def as_dict(self) -> dict:
        def sort(c):
            return dict(c, dropped_by_reason=dict(sorted(c["dropped_by_reason"].items())),
                        converted_by_reason=dict(sorted(c["converted_by_reason"].items())))
        return dict(sort(self.total), complete=self.complete, num_tars=len(self.per_tar),
                    tar_read_errors=self.tar_read_errors,
                    per_tar={k: sort(v) for k, v in sorted(self.per_tar.items())})


def format_report(report: dict) -> str:
    """The report as a plain-text table."""
    splits = report.get("splits", {})
    lines = [f"{report.get('dataset', 'cc3m')}/{report.get('config', '?')} "
             f"{report.get('version', '')} build report"]
    head = f"{'split':<12}{'seen':>10}{'kept':>10}{'dropped':>10}{'converted':>11}{'tars':>7}{'tar errors':>12}"
    lines.append(head)
    for name, s in splits.items():
        flag = "" if s.get("complete", True) else "  (incomplete)"
        lines.append(f"{name:<12}{s['seen']:>10}{s['kept']:>10}{s['dropped']:>10}"
                     f"{s['converted']:>11}{s['num_tars']:>7}{s['tar_read_errors']:>12}{flag}")
    rows = []
    for reason in DROP_REASONS + CONVERT_REASONS:
        key = "dropped_by_reason" if reason in DROP_REASONS else "converted_by_reason"
        counts = [s[key].get(reason, 0) for s in splits.values()]
        if any(counts):
            rows.append((reason, "dropped" if reason in DROP_REASONS else "kept, converted", counts))
    if rows:
        lines.append("")
        lines.append(f"{'reason':<24}{'action':<17}" + "".join(f"{n:>12}" for n in splits))
        for reason, action, counts in rows:
            lines.append(f"{reason:<24}{action:<17}" + "".join(f"{c:>12}" for c in counts))
    bad = [f"{split}:{tar}" for split, s in splits.items()
           for tar, t in s.get("per_tar", {}).items() if t.get("tar_read_error")]
    if bad:
        lines.append("")
        lines.append("tars not readable to their end: " + ", ".join(bad))
    return "\n".join(lines)


# ---------------------------------------------------------------- builder

def find_shards(manual_dir: str | os.PathLike) -> dict[str, list[str]]:
    """{split: sorted tar paths} found in `manual_dir` (splits without tars omitted)."""
    import glob
    out = {}
    for split, patterns in SPLIT_PATTERNS.items():
        paths = sorted({p for pat in patterns
                        for p in glob.glob(os.path.join(os.fspath(manual_dir), pat))
                        if os.path.isfile(p)})
        if paths:
            out[split] = paths
    return out


def check_manual_dir(manual_dir: str | os.PathLike) -> str | None:
    """A one-line error message if `manual_dir` cannot be built from, else None."""
    path = os.path.abspath(os.fspath(manual_dir))
    if not os.path.isdir(path):
        return f"manual dir {path} does not exist (expected img2dataset shards gcc-train-*.tar)"
    if "train" not in find_shards(path):
        return f"manual dir {path} holds no gcc-train-*.tar shards"
    return None


_MANUAL = """\
Download CC3M with img2dataset (https://github.com/rom1504/img2dataset) into
webdataset shards. "Train_GCC-training.tsv" has no header; add one, then:

  { printf 'caption\\turl\\n'; cat Train_GCC-training.tsv; } > cc3m_train.tsv
  img2dataset --url_list cc3m_train.tsv --input_format tsv \\
      --url_col url --caption_col caption --output_format webdataset \\
      --output_folder cc3m_shards --processes_count 16 --thread_count 64 \\
      --image_size 512 --resize_mode keep_ratio --resize_only_if_bigger True
  cd cc3m_shards && for f in [0-9]*.tar; do mv "$f" "gcc-train-$f"; done

`keep_ratio` caps the short side at 512, as the builder's default does.
For validation, download "Validation_GCC-1.1.0-Validation.tsv" the same way into
another folder, rename its tars gcc-val-*.tar and move them into the same folder
as the train tars. The folder (the manual dir) must hold gcc-train-*.tar (each
sample KEY.jpg + KEY.txt + KEY.json) and optionally gcc-val-*.tar:

  python -m mgca_jax.data.cc3m_builder --manual_dir=/path/cc3m_shards --data_dir=/path/tfds

or builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir="/path/cc3m_shards")). Nothing is downloaded by the builder.
"""


class Cc3m(tfds.core.GeneratorBasedBuilder):
    """Conceptual Captions 3M image-caption pairs, validated and re-encoded."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: img2dataset webdataset shards -> TFDS."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL
    BUILDER_CONFIGS = [
        Cc3mConfig(name="default", description="short side <= 512, JPEG q90",
                   max_short_side=512),
        Cc3mConfig(name="original", description="original resolution, JPEG q90",
                   max_short_side=0),
        Cc3mConfig(name="short256", description="short side <= 256, JPEG q90: stored near "
                   "the training resolution, so decoding costs less", max_short_side=256),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        self._num_workers = num_workers
        self._split_stats: dict[str, SplitStats] = {}
        self._generators: list = []
        self._manual_dir_used: str | None = None
        super().__init__(**kwargs)

    def _log_download_bytes(self) -> None:  # tfds's "Downloading ... Unknown size": nothing is
        print(f"building {self.name}/{self.builder_config.name} into {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:  # the report below says it
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "caption": tfds.features.Text(),
                "key": tfds.features.Text(),
            }),
            supervised_keys=None,
            homepage="https://ai.google.com/research/ConceptualCaptions/",
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(dl_manager.manual_dir)
        error = check_manual_dir(manual_dir)
        if error:
            raise FileNotFoundError(error)
        self._manual_dir_used = os.path.abspath(manual_dir)
        shards = find_shards(manual_dir)
        generators = {}
        for split, paths in shards.items():
            gen = self._generate_examples(split, paths)
            self._generators.append(gen)
            generators[split] = gen
        return generators

    def _generate_examples(self, split: str, paths: list[str]):
        cfg = self.builder_config.scan_config()
        names = [os.path.basename(p) for p in paths]
        stats = SplitStats(names)
        self._split_stats[split] = stats
        workers = min(int(self._num_workers or os.cpu_count() or 1), len(paths))
        print(f"{self.name}/{self.builder_config.name}: {split}: scanning {len(paths)} tars "
              f"with {workers} worker(s) ...", flush=True)
        t0 = time.perf_counter()
        step = 50_000
        for path, key, example, reason in scan_tars(paths, cfg, workers):
            tar_name = os.path.basename(path)
            stats.add(tar_name, reason)
            if example is not None:
                yield f"{tar_name}/{key}", example
            if reason != TAR_READ_ERROR and stats.total["seen"] % step == 0:
                print(f"  {split}: {stats.total['seen']} seen, {stats.total['kept']} kept "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
        stats.complete = True
        t = stats.total
        print(f"  {split}: done, {t['seen']} seen, {t['kept']} kept, {t['dropped']} dropped, "
              f"{t['converted']} converted in {time.perf_counter() - t0:.1f}s", flush=True)

    def _download_and_prepare(self, dl_manager, download_config):
        self._split_stats = {}
        self._generators = []
        try:
            super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
        finally:
            for gen in self._generators:  # stops workers if tfds stopped early
                gen.close()
            self._generators = []
        report = self._assemble_report()
        # During preparation data_path is tfds's temporary dir, renamed on success.
        (self.data_path / REPORT_FILENAME).write_text(json.dumps(report, indent=1) + "\n")

    def _assemble_report(self) -> dict:
        return {
            "dataset": self.name,
            "config": self.builder_config.name,
            "version": str(self.version),
            "manual_dir": self._manual_dir_used,
            "settings": dataclasses.asdict(self.builder_config.scan_config()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "splits": {s: self._split_stats[s].as_dict() for s in SPLIT_PATTERNS
                       if s in self._split_stats},
        }

    def build_report(self) -> dict:
        """The build report (see module docstring) of this prepared builder."""
        path = self.data_path / REPORT_FILENAME
        if not path.exists():
            raise FileNotFoundError(f"no build report at {path} (is the data set prepared?)")
        return json.loads(path.read_text())


# ---------------------------------------------------------------- helpers

def config_with_overrides(config_name: str = "default", **overrides) -> Cc3mConfig | str:
    """The named config; the registered config with the resulting fields (so
    `max_short_side=256` from `default` is `short256`, which the trainer opens); or a
    derived one named after the changed fields."""
    base = Cc3m.builder_configs[config_name]
    unknown = set(overrides) - set(SCAN_FIELDS)
    if unknown:
        raise TypeError(f"unknown Cc3mConfig fields: {sorted(unknown)}")
    fields = {k: getattr(base, k) for k in SCAN_FIELDS}
    for k, v in overrides.items():
        if v is not None:
            fields[k] = type(getattr(base, k))(v)
    changed = [k for k in SCAN_FIELDS if fields[k] != getattr(base, k)]
    if not changed:
        return config_name
    for registered in Cc3m.BUILDER_CONFIGS:
        if all(fields[k] == getattr(registered, k) for k in SCAN_FIELDS):
            return registered.name
    name = config_name + "".join(f"_{k}{fields[k]:g}" if isinstance(fields[k], float)
                                 else f"_{k}{fields[k]}" for k in changed)
    return Cc3mConfig(name=name, description=f"{config_name} with {', '.join(changed)} changed",
                      **fields)


def build(manual_dir: str | os.PathLike, data_dir: str | os.PathLike,
          config: str | Cc3mConfig = "default", *, num_workers: int | None = None,
          file_format: str | None = None, **overrides) -> Cc3m:
    """Builds (if needed) and returns the `cc3m` builder in `data_dir`.

    `overrides` are `ScanConfig` fields (derive a config named after them);
    `file_format`: None/"tfrecord" (default) or "array_record".
    """
    if overrides:
        if not isinstance(config, str):
            raise TypeError("overrides need a config name")
        config = config_with_overrides(config, **overrides)
    kwargs = {"file_format": file_format} if file_format else {}
    builder = Cc3m(config=config, data_dir=os.fspath(data_dir), num_workers=num_workers, **kwargs)
    if not builder.is_prepared():
        error = check_manual_dir(manual_dir)
        if error:
            raise FileNotFoundError(error)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return builder


def _open_builder(data_dir: str | os.PathLike, config: str | Cc3mConfig = "default"):
    data_dir = os.fspath(data_dir)
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return tfds.builder_from_directory(data_dir)
    return Cc3m(config=config, data_dir=data_dir)


def load_build_report(data_dir: str | os.PathLike, config: str | Cc3mConfig = "default") -> dict:
    """The build report of a prepared cc3m data set.

    `data_dir` is the tfds root (holding cc3m/) or the versioned dataset dir.
    """
    data_dir = os.fspath(data_dir)
    direct = os.path.join(data_dir, REPORT_FILENAME)
    if os.path.isfile(direct):
        with open(direct, encoding="utf-8") as f:
            return json.load(f)
    return Cc3m(config=config, data_dir=data_dir).build_report()


def _iter_captions(builder, split: str, limit: int | None) -> Iterator[str]:
    """Captions of a split in stored order, without decoding the images."""
    fmt = builder.info.file_format
    if fmt is not None and getattr(fmt, "value", fmt) == "array_record":
        # ArrayRecord has no tf.data reader in tfds; use the random-access source.
        source = builder.as_data_source(split=split,
                                        decoders={"image": tfds.decode.SkipDecoding()})
        n = len(source) if limit is None else min(len(source), int(limit))
        for start in range(0, n, 1024):
            idx = list(range(start, min(n, start + 1024)))
            batch = (source.__getitems__(idx) if hasattr(source, "__getitems__")
                     else [source[i] for i in idx])
            for ex in batch:
                cap = ex["caption"]
                yield cap.decode("utf-8") if isinstance(cap, bytes) else str(cap)
        return
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({"caption": True}))
    if limit is not None:
        ds = ds.take(int(limit))
    for ex in ds.batch(1024).as_numpy_iterator():
        for cap in ex["caption"]:
            yield cap.decode("utf-8")


def dump_captions(data_dir: str | os.PathLike, out_path: str | os.PathLike,
                  split: str = "train", limit: int | None = None, *,
                  config: str | Cc3mConfig = "default") -> int:
    """Writes one caption per line (UTF-8) of a prepared split; returns the count.

    Captions hold no newlines (whitespace is collapsed at build time). The file
    is written atomically. `data_dir` as in `load_build_report`.
    """
    builder = _open_builder(data_dir, config)
    out_path = os.path.abspath(os.fspath(out_path))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    count = 0
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=os.path.dirname(out_path),
                                     suffix=".tmp", delete=False) as f:
        try:
            for cap in _iter_captions(builder, split, limit):
                f.write(" ".join(cap.split()) + "\n")
                count += 1
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, out_path)
    return count


def main(argv: list[str] | None = None) -> int:
    from mgca_jax.cli_errors import Parser
    parser = Parser(
        prog="python -m mgca_jax.data.cc3m_builder",
        description="Build the cc3m TFDS data set from img2dataset webdataset shards.")
    parser.add_argument("--manual_dir", required=True,
                        help="folder with gcc-train-*.tar (and optional gcc-val-*.tar)")
    parser.add_argument("--data_dir", required=True, help="tfds data dir to write to")
    parser.add_argument("--config", default="default", choices=[c.name for c in Cc3m.BUILDER_CONFIGS],
                        help="builder config (the trainer's config.data.config_name); "
                             "short256 stores images near the training resolution")
    parser.add_argument("--max_short_side", type=int, default=None,
                        help="resize so the short side is at most this (0: never; default 512)")
    parser.add_argument("--min_side", type=int, default=None)
    parser.add_argument("--max_pixels", type=int, default=None)
    parser.add_argument("--max_aspect_ratio", type=float, default=None)
    parser.add_argument("--jpeg_quality", type=int, default=None)
    parser.add_argument("--num_workers", type=int, default=None,
                        help="tar scanning processes (default: CPU count)")
    parser.add_argument("--file_format", choices=("tfrecord", "array_record"), default=None)
    parser.add_argument("--captions_out", default=None,
                        help="also write the train captions, one per line, to this file")
    args = parser.parse_args(argv)
    tfds.disable_progress_bar()
    from absl import logging
    logging.set_verbosity(logging.ERROR)  # tfds's warnings about routine states

    error = check_manual_dir(args.manual_dir)
    if error:
        print(f"error: --manual_dir: {error}", file=sys.stderr, flush=True)
        return 2
    overrides = {k: getattr(args, k) for k in SCAN_FIELDS if getattr(args, k) is not None}
    t0 = time.perf_counter()
    builder = build(args.manual_dir, args.data_dir, args.config, num_workers=args.num_workers,
                    file_format=args.file_format, **overrides)
    print(f"data set at {builder.data_dir} ({time.perf_counter() - t0:.1f}s)")
    print(format_report(builder.build_report()))
    if args.captions_out:
        n = dump_captions(builder.data_dir, args.captions_out, "train")
        print(f"wrote {n} captions to {args.captions_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
