"""TFDS builder `mgca_scenes`: the captioned-scenes world as a local data set.

See `mgca_jax.data.scenes` for the world itself: 1-4 objects of 8 classes
(circle, square, triangle, star, ring, cross, diamond, crescent; label ids 1..8,
0 = background) on textured/cluttered backgrounds, with alt-text-like captions
that name some of the objects.

Nothing is downloaded: `_split_generators` ignores the download manager and the
examples are generated locally, deterministically from the config's `seed`
(every split uses its own derived seed, so no two splits share a layout).
Splits (docs/method.md, "Evaluation splits"):

  train                num_train scenes, colours by the config's `train_colours`
  validation           num_validation scenes, standard colours
  validation_atypical  num_validation scenes of the same kind recoloured: every
                       object in a contrasting colour that is not its class's
                       typical one (only shape tells the class)
  tune, tune_atypical  the same two kinds with seeds of their own, for choosing
                       settings without touching either validation split
                       (`tune` at seed 0 is the tune set of earlier sessions)

Only `train` depends on `train_colours`, so every config of one image size and
seed shares its evaluation splits. Features per example:

  image:   uint8 [S, S, 3] (PNG)        -- used for training and evaluation
  caption: text                         -- used for training only
  mask:    uint8 [S, S, 1] (PNG), 0..8  -- evaluation only (zero-shot segmentation)
  id:      int64, the example's index in its split's generator stream
           (`scenes.make_example(split_seed(seed, split), id, size, colours)`;
           an atypical split skips the rare stream index with no atypical colouring)

Configs: `default` (64 px, 20000 train / 500 per evaluation split), `tiny`
(32 px, 256 / 64, for tests) and `no_colour_cue` (`default` with a training
world whose colours say nothing about the class: the diagnostic world). A custom `ScenesConfig` instance may also be passed, or
use `build(data_dir, 'default', image_size=..., ...)` which derives one.
"""
from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import time
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath

from mgca_jax.data import scenes

# Split-specific offsets mixed into the config seed (independent, reproducible
# streams). They differ modulo 7919, so no two splits of any seeds share a stream.
_SPLIT_SEED_OFFSET = {"train": 1_000_003, "validation": 2_000_029,
                      "validation_atypical": 3_000_017, "tune": 424_242,
                      "tune_atypical": 5_000_011}
# Colour policy (scenes.COLOUR_POLICIES) of each evaluation split.
EVAL_SPLIT_COLOURS = {"validation": "standard", "validation_atypical": "atypical",
                      "tune": "standard", "tune_atypical": "atypical"}
ATYPICAL_SPLIT = "validation_atypical"
# Each standard evaluation split and its atypical-colour partner (same kind, own seed).
ATYPICAL_PARTNER = {"validation": ATYPICAL_SPLIT, "tune": "tune_atypical"}
# Use worker processes above this many examples in a split (when >1 CPU);
# the environment variable MGCA_SCENES_WORKERS sets their number (1 = serial).
_PARALLEL_MIN_EXAMPLES = 4000
_CHUNK = 256


@dataclasses.dataclass
class ScenesConfig(tfds.core.BuilderConfig):
    """Config of the captioned-scenes data set."""
    image_size: int = 64
    num_train: int = 20000
    num_validation: int = 500     # scenes in each evaluation split
    seed: int = 0
    train_colours: str = "standard"   # scenes.COLOUR_POLICIES key of the train split


def split_seed(seed: int, split: str) -> int:
    """The generator seed used for `split` of a config with `seed`."""
    return int(seed) * 7_919 + _SPLIT_SEED_OFFSET[split]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encoded_example(args):
    """(seed, index, image_size, colours) -> (index, image png, mask png, caption),
    or None when the scene has no atypical colouring."""
    seed, index, size, colours = args
    try:
        ex = scenes.make_example(seed, index, size, colours)
    except scenes.NoAtypicalColouring:
        return None
    return index, _png(ex["image"]), _png(ex["mask"]), ex["caption"]


def _num_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _iter_encoded(seed: int, num: int, size: int, colours: str = "standard"):
    """The first `num` encoded examples of the stream, in order (skipping stream
    indices without an atypical colouring)."""
    start, done = 0, 0
    while done < num:
        stop = start + num - done
        for item in _map_encoded(seed, range(start, stop), size, colours):
            if item is not None:
                done += 1
                yield item
        start = stop


def _map_encoded(seed: int, indices: range, size: int, colours: str):
    """Encoded examples of `indices` in order, in worker processes when worthwhile."""
    num = len(indices)
    jobs = ((seed, i, size, colours) for i in indices)
    workers = int(os.environ.get("MGCA_SCENES_WORKERS", 0)) or min(_num_cpus(), 8)
    if (num >= _PARALLEL_MIN_EXAMPLES and workers > 1
            and "fork" in multiprocessing.get_all_start_methods()):
        # Workers run numpy/PIL only (never TensorFlow or JAX), so fork is safe
        # and avoids re-importing the caller's __main__ module.
        # JAX's fork warning does not apply to them.
        ctx = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            pool = ctx.Pool(workers)
        with pool:
            yield from pool.imap(_encoded_example, jobs, chunksize=_CHUNK)
    else:
        yield from map(_encoded_example, jobs)


class MgcaScenes(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated captioned scenes with per-pixel masks (offline)."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Each class has a typical colour (used for ~70% of objects).",
                     "1.2.0": "Adds validation_atypical, tune and tune_atypical splits and the "
                              "no_colour_cue config; train and validation unchanged."}
    BUILDER_CONFIGS = [
        ScenesConfig(name="default", description="64x64, 20000 train / 500 validation",
                     image_size=64, num_train=20000, num_validation=500, seed=0),
        ScenesConfig(name="tiny", description="32x32, 256 train / 64 validation (tests)",
                     image_size=32, num_train=256, num_validation=64, seed=0),
        ScenesConfig(name="no_colour_cue",
                     description="default with train colours independent of the class",
                     image_size=64, num_train=20000, num_validation=500, seed=0,
                     train_colours="no_colour_cue"),
    ]
    DEFAULT_CONFIG_NAME = "default"

    # tfds' default `code_path` probes `importlib_resources`, an optional
    # package that may be missing; this module's own path is all it needs.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(os.path.abspath(__file__))

    def _info(self) -> tfds.core.DatasetInfo:
        s = int(self.builder_config.image_size)
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(s, s, 3)),
                "mask": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                "caption": tfds.features.Text(),
                "id": tf.int64,
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is generated locally
        cfg = self.builder_config
        scenes.colour_policy(cfg.train_colours)   # fails early on an unknown name
        splits = {"train": self._generate_examples("train", int(cfg.num_train), cfg.train_colours)}
        for split, colours in EVAL_SPLIT_COLOURS.items():
            splits[split] = self._generate_examples(split, int(cfg.num_validation), colours)
        return splits

    def _generate_examples(self, split: str, num: int, colours: str):
        cfg = self.builder_config
        seed = split_seed(cfg.seed, split)
        print(f"generating {self.name}/{cfg.name}: {split} {num} examples "
              f"({cfg.image_size}x{cfg.image_size}) ...", flush=True)
        t0 = time.perf_counter()
        step = max(num // 4, 5000)
        done = 0
        for index, image, mask, caption in _iter_encoded(seed, num, int(cfg.image_size), colours):
            # Encoded PNG bytes are stored as-is by tfds.features.Image.
            yield index, {"image": image, "mask": mask, "caption": caption, "id": index}
            done += 1
            if done % step == 0 and done < num:
                print(f"  {split}: {done}/{num} ({time.perf_counter() - t0:.1f}s)",
                      flush=True)
        print(f"  {split}: {num}/{num} done in {time.perf_counter() - t0:.1f}s",
              flush=True)


def _config_with_overrides(config_name: str, overrides: dict) -> ScenesConfig | str:
    if not overrides:
        return config_name
    base = MgcaScenes.builder_configs[config_name]
    keys = ("image_size", "num_train", "num_validation", "seed", "train_colours")
    unknown = set(overrides) - set(keys)
    if unknown:
        raise TypeError(f"unknown ScenesConfig fields: {sorted(unknown)}")
    fields = {k: getattr(base, k) for k in keys}
    fields.update({k: v if k == "train_colours" else int(v) for k, v in overrides.items()})
    scenes.colour_policy(fields["train_colours"])
    if all(getattr(base, k) == v for k, v in fields.items()):
        return config_name
    name = (f"{config_name}_s{fields['image_size']}_tr{fields['num_train']}"
            f"_va{fields['num_validation']}_seed{fields['seed']}")
    if fields["train_colours"] != base.train_colours:
        name += f"_{fields['train_colours']}"
    return ScenesConfig(name=name, description=f"{config_name} with overrides {overrides}",
                        **fields)


def build(data_dir: str, config_name: str = "default", **overrides) -> tfds.core.DatasetBuilder:
    """Returns the prepared `mgca_scenes` builder in `data_dir` (generates it if needed).

    `overrides` (image_size, num_train, num_validation, seed, train_colours) derive a custom
    config named after the base config and the overridden values. Fully offline.
    """
    config = _config_with_overrides(config_name, overrides)
    builder = MgcaScenes(config=config, data_dir=data_dir)
    cfg = builder.builder_config
    if not builder.is_prepared():
        t0 = time.perf_counter()
        print(f"generating {builder.name}/{cfg.name}: train {cfg.num_train} "
              f"({cfg.train_colours} colours), {len(EVAL_SPLIT_COLOURS)} evaluation splits of "
              f"{cfg.num_validation} ({cfg.image_size}x{cfg.image_size}) into {data_dir} ...",
              flush=True)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        print(f"generated {builder.name}/{cfg.name} in {time.perf_counter() - t0:.1f}s",
              flush=True)
    return builder
