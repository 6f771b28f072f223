"""Time to the first training batch after a resume at a late step: old reader vs new.

  python benchmarks/resume_time.py [--records=200000] [--shards=16] [--epochs=3]
      [--batch=16] [--processes=1] [--out=DIR]

Generates (no download) a TFDS data set of --records small examples (a 32x32 PNG
drawn from a few pre-encoded images, a short caption) in --shards tfrecord files,
with configs/tiny.py's features, tokenizer size and pp_train. Then, for process 0
of --processes, times building the train dataset and taking its first batch at
step 0 and at a late step (--epochs epochs of this process's part in), with

  old  the reader before issue 14: tfds as_dataset + repeat + shuffle, then
       `skip(step * local_batch)`, which reads every skipped record again
  new  mgca_jax.data.input_pipeline.train_dataset: opens the piece of the file
       holding the resume position and skips only inside it

Prints the seconds of each and the ratio old / new at the late step. Each
timing builds a fresh dataset, after one untimed warm-up of each reader (tracing,
first file reads); the machine's load adds to all of them.
"""
import argparse
import os
import random
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path[:0] = [ROOT, os.path.join(ROOT, "configs")]
import tiny  # noqa: E402

from mgca_jax.data import input_pipeline, ops, scenes  # noqa: E402
from mgca_jax.data.tokenizer import train_tokenizer  # noqa: E402

IMAGE_SIZE = 32
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


def _captions(n, seed=0):
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.sample(scenes.CLASS_NAMES, 2)
        yield f"a {rng.choice(COLOURS)} {a} to the left of a {rng.choice(COLOURS)} {b}"


class ResumeBench(tfds.core.GeneratorBasedBuilder):
    """Many small image-caption records in several shards."""
    VERSION = tfds.core.Version("1.0.0")
    num_records = 1000

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        images = [tf.io.encode_png(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)).numpy()
                  for _ in range(16)]
        for i, caption in enumerate(_captions(self.num_records)):
            yield i, {"image": images[i % len(images)], "caption": caption}


def build(data_dir, records, shards):
    ResumeBench.num_records = records
    builder = ResumeBench(data_dir=data_dir)
    if not builder.is_prepared():
        t0 = time.perf_counter()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=shards))
        print(f"generated {records} records in {shards} shards in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return builder


def old_train_dataset(config, builder, ctx, start_step=0, process_index=0, process_count=1):
    """The train reader before issue 14 (kept here to measure it)."""
    local_batch = config.batch_size // process_count
    split = tfds.even_splits(config.data.train_split, n=process_count, drop_remainder=True)[process_index]
    read_config = tfds.ReadConfig(shuffle_seed=config.seed, interleave_cycle_length=4, add_tfds_id=False)
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders=input_pipeline._skip_image_decoding(builder))
    ds = ds.repeat().shuffle(config.input.shuffle_buffer, seed=config.seed + process_index)
    ds = ds.enumerate().map(input_pipeline._add_seed(config.seed * 1000 + process_index))
    ds = ds.skip(start_step * local_batch)
    ds = ds.map(ops.build(config.input.pp_train.format(**config.input), ctx),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def first_batch_seconds(make, config, builder, ctx, step, processes):
    t0 = time.perf_counter()
    batch = next(iter(make(config, builder, ctx, step, 0, processes)))
    seconds = time.perf_counter() - t0
    if batch["image"].shape[0] != config.batch_size // processes:
        sys.exit(f"bad batch shape {batch['image'].shape}")
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--epochs", type=float, default=3.0, help="resume this many epochs in")
    p.add_argument("--batch", type=int, default=16, help="global batch")
    p.add_argument("--processes", type=int, default=1, help="time process 0 of this many")
    p.add_argument("--out", default="", help="data dir (kept); default a temporary one")
    args = p.parse_args()
    tfds.disable_progress_bar()
    for name in ("records", "shards", "batch", "processes"):
        if getattr(args, name) < 1:
            print(f"resume_time.py: --{name} must be >= 1", file=sys.stderr)
            sys.exit(2)
    data_dir = args.out or tempfile.mkdtemp(prefix="resume_time_")
    builder = build(data_dir, args.records, args.shards)

    config = tiny.get_config()
    config.batch_size = args.batch
    tokenizer_path = os.path.join(data_dir, "spm.model")
    if not os.path.isfile(tokenizer_path):
        train_tokenizer(_captions(2000), tokenizer_path, config.input.vocab_size)
    config.input.tokenizer = tokenizer_path
    ctx = input_pipeline.make_context(config, input_pipeline.get_tokenizer(config, builder))

    local_batch = args.batch // args.processes
    part = args.records // args.processes
    late = int(args.epochs * part) // local_batch
    print(f"{args.records} records, {args.shards} shards, process 0 of {args.processes}, "
          f"local batch {local_batch}, shuffle/piece size {config.input.shuffle_buffer}; "
          f"late step {late} = {late * local_batch} records in", flush=True)
    for make in (input_pipeline.train_dataset, old_train_dataset):   # warm-up: tracing, first reads
        first_batch_seconds(make, config, builder, ctx, 0, args.processes)
    times = {}
    for name, make in (("new", input_pipeline.train_dataset), ("old", old_train_dataset)):
        for step in (0, late):
            times[name, step] = first_batch_seconds(make, config, builder, ctx, step, args.processes)
            print(f"{name}: first batch at step {step:>9}: {times[name, step]:8.3f} s", flush=True)
    print(f"late step {late}: old {times['old', late]:.3f} s, new {times['new', late]:.3f} s, "
          f"ratio old/new {times['old', late] / times['new', late]:.1f}")


if __name__ == "__main__":
    main()
