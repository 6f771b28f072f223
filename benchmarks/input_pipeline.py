"""Input throughput per host core vs the train step's consumption (CC3M recipe).

Builds a small CC3M-like TFDS data set with the real `cc3m` builder from
generated webdataset tars (scene images from `mgca_jax.data.scenes` upscaled to
--width x --height with a fine texture, so they encode like photos; captions
from the scenes), then measures with tf.data, per stage of the config's
`input.pp_train` (by default configs/cc3m.py):

  decode     the `decode` op (JPEG -> uint8) on the stored (encoded) examples
  augment    the image ops after decode (random_resized_crop, flip_lr, normalize)
             on already decoded images
  tokenize   tokenize + object_words + object_prompts on the captions
  pp_train   the whole chain, encoded example -> training example

each with `map(num_parallel_calls=1)` on a one-thread tf.data pool (intra-op
parallelism 1): images/s of one host core, given both per wall-clock second and
per CPU-second of the process (the latter does not depend on how much of a
shared machine other work takes); and with AUTOTUNE on the default pool:
images/s of all the host's cores. The stage inputs are cached in memory first,
so reading is not timed; `train_dataset` (the real loader,
mgca_jax.data.input_pipeline.train_dataset: read + shuffle + pp_train + batch,
AUTOTUNE) is timed end to end. Timing runs inside tf.data (`Dataset.reduce`),
after a warm-up, so Python iteration costs nothing.

Next to it, the train step's consumption: images/s of the jitted train step
(`train.make_train_step` + `train.jit_train_step`, full objective) on this
machine's devices for the same config at a small batch, and XLA's FLOP count of
that step, which gives the step rate of an accelerator at a stated peak and
utilisation (--mfu), and from it the host cores each accelerator needs.

Usage:
  .venv/bin/python benchmarks/input_pipeline.py [--config=configs/cc3m.py]
      [--config.model.image_variant=S/16] [--train_batch=8] [--num_images=200]
      [--width=400 --height=300] [--seconds=3] [--skip_train]
"""
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from mgca_jax.data import cc3m_builder, input_pipeline, ops  # noqa: E402

IMAGE_OPS = ("resize", "random_resized_crop", "flip_lr", "normalize")
TEXT_OPS = ("tokenize", "object_words", "object_prompts")
# (name, peak dense bf16 TFLOP/s per chip, host vCPUs per chip of a typical host):
# vendor specs, not measured here. TPU VMs: v4 240 vCPUs / 4 chips, v5e
# ct5lp-hightpu-8t 224 / 8, v5p 208 / 4; DGX A100 2x64-core EPYC = 256 threads / 8,
# DGX H100 2x56-core Xeon = 224 threads / 8. The step rate assumed is peak * mfu.
ACCELERATORS = (("TPU v4", 275.0, 60), ("TPU v5e", 197.0, 28), ("TPU v5p", 459.0, 52),
                ("A100", 312.0, 32), ("H100 SXM", 989.0, 28))
DEFAULT_VOCAB = 16_000   # the CC3M tokenizer's size (configs/cc3m.py: spm_cc3m_16k.model)


# ---------------------------------------------------------------- data

def _texture(rng, h, w):
    """Photo-like fine detail: smooth noise at a few scales (JPEG cost ~ a photo's)."""
    from PIL import Image
    out = np.zeros((h, w), np.float32)
    for cell, amp in ((1, 4.0), (3, 8.0), (12, 12.0), (48, 16.0)):
        small = rng.normal(size=(max(1, h // cell), max(1, w // cell))).astype(np.float32)
        im = Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        out += amp * np.asarray(im)
    return out[..., None]


def make_image(seed, index, width, height):
    """(JPEG bytes, caption): scene `index` upscaled to width x height with texture."""
    import io

    from PIL import Image

    from mgca_jax.data import scenes
    ex = scenes.make_example(seed, index, 96)
    rng = np.random.default_rng([seed, index, 1])
    im = Image.fromarray(ex["image"]).resize((width, height), Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(im, np.float32) + _texture(rng, height, width), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), ex["caption"]


def make_shards(manual_dir, num_images, width, height, per_tar=100, seed=0):
    """img2dataset-style webdataset tars gcc-train-*.tar (KEY.jpg, KEY.txt, KEY.json)."""
    import json

    import webdataset as wds
    os.makedirs(manual_dir, exist_ok=True)
    for t, start in enumerate(range(0, num_images, per_tar)):
        with wds.TarWriter(os.path.join(manual_dir, f"gcc-train-{t:06d}.tar")) as sink:
            for i in range(start, min(num_images, start + per_tar)):
                # every 4th image portrait, as in web data
                w, h = (height, width) if i % 4 == 3 else (width, height)
                jpeg, caption = make_image(seed, i, w, h)
                key = f"{i:09d}"
                sink.write({"__key__": key, "jpg": jpeg, "txt": caption,
                            "json": json.dumps({"key": key, "status": "success"})})


def build_dataset(work_dir, num_images=200, width=400, height=300, num_workers=2,
                  max_short_side=512):
    """The prepared `cc3m` builder of a generated data set (reused if already built); images
    stored with the short side <= max_short_side (the default config's 512, 0 = kept)."""
    root = os.path.join(work_dir, f"cc3m_like_n{num_images}_{width}x{height}")
    manual, data_dir = os.path.join(root, "shards"), os.path.join(root, "tfds")
    config = ("default" if max_short_side == 512 else
              cc3m_builder.config_with_overrides("default", max_short_side=max_short_side))
    builder = cc3m_builder.Cc3m(config=config, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    if not os.path.isdir(manual):
        make_shards(manual + ".tmp", num_images, width, height)
        os.replace(manual + ".tmp", manual)
    return cc3m_builder.build(manual, data_dir, config=config, num_workers=num_workers)


def stored_image_stats(builder, limit=256):
    """(mean JPEG bytes, mean pixels) of the stored images."""
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()},
                            shuffle_files=False).take(limit)
    sizes, pixels = [], []
    for ex in ds:
        sizes.append(len(ex["image"].numpy()))
        shape = tf.image.extract_jpeg_shape(ex["image"]).numpy()
        pixels.append(int(shape[0]) * int(shape[1]))
    return float(np.mean(sizes)), float(np.mean(pixels))


# ---------------------------------------------------------------- stages

def stage_specs(pp_train):
    """{stage: spec}: decode / augment / tokenize split out of the pp_train spec."""
    parts = [p.strip() for p in pp_train.split("|") if p.strip()]
    names = [ops.parse(p)[0][0] for p in parts]
    pick = lambda wanted: "|".join(p for p, n in zip(parts, names) if n in wanted)  # noqa: E731
    return {"decode": pick(("decode",)), "augment": pick(IMAGE_OPS),
            "tokenize": pick(TEXT_OPS), "pp_train": "|".join(parts)}


def cached_source(builder, pre_spec="", ctx=None, split="train"):
    """In-memory (filled) dataset of the split's stored examples, optionally after pre_spec."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=input_pipeline._skip_image_decoding(builder))
    if pre_spec:
        ds = ds.map(ops.build(pre_spec, ctx), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.cache()
    ds.reduce(np.int64(0), lambda n, _: n + 1)  # fills the cache
    return ds


def _touch(ex):
    """A scalar that depends on every numeric output (nothing can be pruned)."""
    vals = [tf.cast(tf.reshape(v, [-1])[:1], tf.float32) for k, v in sorted(ex.items())
            if k != "_seed" and v.dtype != tf.string]
    return tf.reduce_sum(tf.concat(vals, 0)) if vals else tf.constant(0.0)


def _options(parallel):
    opts = tf.data.Options()
    opts.deterministic = True
    if parallel != tf.data.AUTOTUNE:  # one core: one tf.data thread, no intra-op threads
        opts.threading.private_threadpool_size = int(parallel)
        opts.threading.max_intra_op_parallelism = 1
        opts.experimental_optimization.map_parallelization = False
    return opts


def _time_count(ds, n):
    """(elements, wall seconds, CPU seconds of this process) to run n elements of ds."""
    t0, c0 = time.perf_counter(), time.process_time()
    count = int(ds.take(n).reduce(np.int64(0), lambda c, _: c + 1))
    return count, time.perf_counter() - t0, time.process_time() - c0


def _timed_rate(ds, seconds, min_items, per_item=1, repeats=1):
    """{"wall": items/s, "cpu": items per CPU-second of this process} of `ds`.

    A warm-up run (it also calibrates the count), then `repeats` runs of ~`seconds`
    each; the best of each (other load on shared cores only slows a run down). The
    CPU-time rate does not depend on how much of the machine other work takes.
    """
    count, dt, _ = _time_count(ds, max(2, min_items // 4))
    n = max(min_items, int(seconds * count / max(dt, 1e-6)))
    best = {"wall": 0.0, "cpu": 0.0}
    for _ in range(max(1, repeats)):
        count, dt, cpu = _time_count(ds, n)
        best["wall"] = max(best["wall"], count * per_item / dt)
        best["cpu"] = max(best["cpu"], count * per_item / max(cpu, 1e-9))
    return best


def measure_stage(source, spec, ctx, parallel=1, seconds=3.0, min_images=32, seed=0, repeats=1):
    """{"wall": images/s, "cpu": images per CPU-second} of the ops in `spec` applied by
    tf.data map with `parallel` calls (1: one core, see _options; tf.data.AUTOTUNE: all
    cores) to `source` (repeated)."""
    fn = ops.build(spec, ctx)
    ds = source.repeat().enumerate().map(input_pipeline._add_seed(seed))
    ds = ds.map(lambda ex: _touch(fn(ex)), num_parallel_calls=parallel, deterministic=True)
    return _timed_rate(ds.with_options(_options(parallel)), seconds, min_images, repeats=repeats)


def measure_train_dataset(config, builder, ctx, seconds=3.0, min_batches=4, repeats=1):
    """{"wall", "cpu"} images/s of input_pipeline.train_dataset (read + shuffle + pp_train +
    batch, AUTOTUNE)."""
    ds = input_pipeline.train_dataset(config, builder, ctx)
    return _timed_rate(ds, seconds, min_batches, per_item=config.batch_size, repeats=repeats)


def input_rates(config, builder, ctx, seconds=3.0, min_images=32, parallels=(1, tf.data.AUTOTUNE),
                repeats=1):
    """(specs, {(stage, parallel): {"wall", "cpu"} images/s}) for decode / augment /
    tokenize / pp_train."""
    specs = stage_specs(config.input.pp_train.format(**config.input))
    if ctx.tokenizer is not None:  # its tf-text resource is made lazily: make it outside a trace
        ctx.tokenizer.tf_tokenize(tf.constant(""), 2)
    encoded = cached_source(builder)
    decoded = cached_source(builder, specs["decode"], ctx)
    rates = {}
    for stage, spec in specs.items():
        if not spec:
            continue
        source = decoded if stage == "augment" else encoded
        for p in parallels:
            rates[stage, p] = measure_stage(source, spec, ctx, p, seconds, min_images,
                                            repeats=repeats)
    return specs, rates


# ---------------------------------------------------------------- train step

def train_step_rate(config, batch, steps=3):
    """(images/s, seconds/step, compile s, XLA flops per image, loss) of the jitted train step
    (median of `steps` steps after one warm-up step)."""
    import jax

    from mgca_jax import sharding, train
    from mgca_jax.models.two_tower import make_model
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx, schedule = train.make_optimizer(config)
    init, abstract = train.abstract_state(model, tx, config)
    state_sh = sharding.state_shardings(abstract, mesh, config.sharding.params)
    step, _ = train.make_train_step(model, tx, schedule, config, mesh)
    fn = train.jit_train_step(step, state_sh, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=state_sh)()
        batch = jax.device_put({k: np.asarray(v) for k, v in batch.items()}, batch_sh)
        rng = jax.random.key(0)
        t0 = time.perf_counter()
        compiled = fn.lower(state, batch, rng).compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        state, metrics = compiled(state, batch, rng)   # warm-up
        jax.block_until_ready(metrics)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    b = int(next(iter(batch.values())).shape[0])
    sec = float(np.median(times))
    return b / sec, sec, compile_s, flops / b, float(metrics["loss"])


def cores_needed(accel_images_per_s, per_core_images_per_s):
    return accel_images_per_s / per_core_images_per_s


# ---------------------------------------------------------------- main

def main(argv):
    from absl import flags
    FLAGS = flags.FLAGS
    import jax

    config = _CONFIG.value
    if config.model.vocab_size == -1:
        config.model.vocab_size = DEFAULT_VOCAB
    work_dir = FLAGS.work_dir or os.path.join(tempfile.gettempdir(), "mgca_input_bench")
    t0 = time.perf_counter()
    builder = build_dataset(work_dir, FLAGS.num_images, FLAGS.width, FLAGS.height)
    build_s = time.perf_counter() - t0
    tokenizer = input_pipeline.get_tokenizer(config, builder)
    ctx = input_pipeline.make_context(config, tokenizer)
    mean_bytes, mean_px = stored_image_stats(builder)
    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    print(f"host: {n_cores} cores visible ({os.cpu_count()} CPUs), tf {tf.__version__}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")
    print(f"data: {builder.info.splits['train'].num_examples} images, stored by the cc3m builder "
          f"(JPEG q90), mean {mean_px / 1e3:.0f} kpixel ({FLAGS.width}x{FLAGS.height}, "
          f"every 4th portrait), mean {mean_bytes / 1e3:.1f} kB; built/reused in {build_s:.1f}s "
          f"under {work_dir}")
    print(f"tokenizer: {tokenizer.model_path} ({tokenizer.vocab_size} pieces)")
    specs, rates = input_rates(config, builder, ctx, FLAGS.seconds, repeats=FLAGS.repeats)
    auto = tf.data.AUTOTUNE
    print("\ninput, images/s (tf.data map; 1 core = num_parallel_calls=1 on a 1-thread pool, "
          "intra-op parallelism 1; AUTOTUNE = default pool, all "
          f"{n_cores} visible cores; best of {FLAGS.repeats} runs of ~{FLAGS.seconds:g}s after a "
          "warm-up). 'per CPU-s' = images per CPU-second of the process: what one core does "
          "whatever other work takes of the machine; 'wall' is what this (shared) host gave")
    print(f"{'stage':<10} {'per CPU-s':>10} {'1 core wall':>12} {'AUTOTUNE wall':>14}  ops")
    for stage, spec in specs.items():
        if (stage, 1) in rates:
            print(f"{stage:<10} {rates[stage, 1]['cpu']:>10.0f} {rates[stage, 1]['wall']:>12.0f} "
                  f"{rates[stage, auto]['wall']:>14.0f}  {spec}")
    bench_cfg = config.copy_and_resolve_references()
    bench_cfg.batch_size = FLAGS.loader_batch
    bench_cfg.input.shuffle_buffer = min(bench_cfg.input.shuffle_buffer, 512)
    loader = measure_train_dataset(bench_cfg, builder, ctx, FLAGS.seconds, repeats=FLAGS.repeats)
    print(f"{'train_dataset':<14} {loader['cpu']:>6.0f} {'':>12} {loader['wall']:>14.0f}  "
          "input_pipeline.train_dataset: read + "
          f"shuffle({bench_cfg.input.shuffle_buffer}) + pp_train + batch({bench_cfg.batch_size}), "
          "AUTOTUNE")
    per_core = rates["pp_train", 1]["cpu"]

    flops_img = None
    if not FLAGS.skip_train:
        step_cfg = config.copy_and_resolve_references()
        step_cfg.batch_size = FLAGS.train_batch
        step_cfg.input.shuffle_buffer = min(step_cfg.input.shuffle_buffer, 512)
        batch = next(input_pipeline.as_numpy(input_pipeline.train_dataset(step_cfg, builder, ctx)))
        m = step_cfg.model
        print(f"\ntrain step (full objective, weights {dict(step_cfg.loss.weights)}), image "
              f"{m.image_variant} at {step_cfg.input.image_size}px, text {m.text_variant} "
              f"({step_cfg.input.max_len} tokens, vocab {m.vocab_size}), dtype {m.dtype}, "
              f"batch {step_cfg.batch_size}, {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s), params {step_cfg.sharding.params}:")
        rate, sec, compile_s, flops_img, loss = train_step_rate(step_cfg, batch, FLAGS.train_steps)
        print(f"  {rate:.2f} images/s ({sec:.2f} s/step, median of {FLAGS.train_steps}; compile "
              f"{compile_s:.0f}s; loss {loss:.3f}); XLA cost analysis: {flops_img / 1e9:.1f} "
              f"GFLOP per image (forward + backward + update)")
        ratio = per_core / rate
        verdict = ("one core keeps up" if ratio >= 1 else
                   f"one core does not keep up: {cores_needed(rate, per_core):.1f} cores needed")
        print(f"  on this machine: input (pp_train, one core) {per_core:.0f} images/s, step "
              f"{rate:.2f} images/s, ratio {ratio:.2f}: {verdict}")
    if flops_img is None or not np.isfinite(flops_img) or flops_img <= 0:
        flops_img = FLAGS.flops_per_image * 1e9
        print(f"\n(no step measured: assuming {FLAGS.flops_per_image:.1f} GFLOP per image)")
    print(f"\nhost cores per accelerator to keep up, at an ASSUMED step rate = peak bf16 x "
          f"{FLAGS.mfu:.0%} MFU / {flops_img / 1e9:.1f} GFLOP per image (not measured here):")
    print(f"{'accelerator':<12} {'peak TFLOP/s':>12} {'images/s':>9} {'decode cores':>13} "
          f"{'pp_train cores':>15} {'host vCPUs/chip':>16}")
    for name, peak, vcpus in ACCELERATORS:
        img_s = peak * 1e12 * FLAGS.mfu / flops_img
        need = cores_needed(img_s, per_core)
        print(f"{name:<12} {peak:>12.0f} {img_s:>9.0f} "
              f"{cores_needed(img_s, rates['decode', 1]['cpu']):>13.1f} {need:>15.1f} "
              f"{vcpus:>12} {'ok' if need <= vcpus else 'SHORT'}")
    print("(cores = accelerator images/s / images per CPU-second measured here (one vCPU of "
          "this host); host vCPUs per chip: typical host from vendor specs, not measured; per-core "
          "cost grows with the stored image size: CC3M's default build keeps the short side "
          "<= 512)")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "cc3m.py"), "Config file.")
    flags.DEFINE_string("work_dir", "", "where the generated data set goes "
                        "(default: $TMPDIR/mgca_input_bench; reused if present)")
    flags.DEFINE_integer("num_images", 200, "images in the generated data set")
    flags.DEFINE_integer("width", 400, "generated image width (landscape)")
    flags.DEFINE_integer("height", 300, "generated image height (landscape)")
    flags.DEFINE_float("seconds", 3.0, "timed seconds per measurement run (after warm-up)")
    flags.DEFINE_integer("repeats", 3, "runs per measurement; the best is printed")
    flags.DEFINE_integer("loader_batch", 32, "batch of the timed train_dataset")
    flags.DEFINE_integer("train_batch", 8, "batch of the timed train step")
    flags.DEFINE_integer("train_steps", 3, "timed train steps (after one warm-up step)")
    flags.DEFINE_bool("skip_train", False, "skip the train step")
    flags.DEFINE_float("mfu", 0.35, "assumed model FLOP utilisation of an accelerator")
    flags.DEFINE_float("flops_per_image", 36.7, "GFLOP per image when --skip_train (default: "
                       "XLA's count of the configs/cc3m.py step, S/16 at 224px)")
    app.run(main)
