"""pp_train images per CPU-second: two or more preprocessing chains, alternated in one run.

Builds (or reuses) the CC3M-like data set of benchmarks/input_pipeline.py with the real
`cc3m` builder (--width x --height scene images with a photo-like texture, every 4th
portrait, re-encoded by the builder at --max_short_side), then times each chain on one core
(tf.data map with num_parallel_calls=1 on a one-thread pool, intra-op parallelism 1; see
input_pipeline._options) over the cached encoded examples, in rounds: every round times every
chain once, so load on a shared machine falls on all of them alike. Prints each chain's median
and best images per CPU-second of the process, and each chain's median ratio to the first.

Default chains: `before` = configs/cc3m.py's chain as it was before issue 18: decode, then
crop and antialiased resize, `normalize` as two broadcasting ops (`normalize_broadcast`
below), the caption tokenized through the ragged batch path (`tokenize_ragged` below);
`after` = the config's `input.pp_train`.

Usage:
  .venv/bin/python benchmarks/pp_train_paths.py [--width=683 --height=512]
      [--max_short_side=512] [--rounds=5] [--seconds=2] [--chain=name=spec ...]
"""
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import input_pipeline as bench  # noqa: E402  (benchmarks/input_pipeline.py)
from mgca_jax.data import input_pipeline, ops  # noqa: E402
from mgca_jax.evaluation.protocol import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

TEXT = ("{tokenize}({max_len})|object_words({num_objects})|object_prompts({object_max_len})|"
        "keep('image','tokens','object_ids','object_mask','object_tokens')")
BEFORE = "decode|random_resized_crop({image_size}, 0.9, 1.0)|flip_lr|normalize_broadcast|" + TEXT


@ops.register
def normalize_broadcast(ctx):
    """`normalize` as it was before its one-matmul form: two broadcasting ops (same values
    within float32 rounding, the old cost)."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def op(ex):
        ex = dict(ex)
        ex["image"] = (tf.cast(ex["image"], tf.float32) - mean) / std
        return ex
    return op


@ops.register
def tokenize_ragged(ctx, max_len, key="caption", out="tokens"):
    """`tokenize` as it was before the one-caption path: the caption as a batch of one, through
    the ragged ops of Tokenizer.tf_tokenize's batch path (same ids, the old cost)."""
    def op(ex):
        ex = dict(ex)
        ex[out] = ctx.tokenizer.tf_tokenize(tf.reshape(ex[key], [1]), max_len)[0]
        return ex
    return op


def alternate(source, chains, ctx, rounds, seconds, min_images=32):
    """{name: [images per CPU-s, one per round]}: every round times each chain once."""
    rates = {name: [] for name in chains}
    for _ in range(rounds):
        for name, spec in chains.items():
            rates[name].append(bench.measure_stage(source, spec, ctx, 1, seconds, min_images)["cpu"])
    return rates


def main(argv):
    from absl import flags
    FLAGS = flags.FLAGS
    config = _CONFIG.value
    chains = {"before": BEFORE.replace("{tokenize}", "tokenize_ragged"),
              "after": config.input.pp_train}
    for item in FLAGS.chain:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            print(f"error: --chain {item!r}: expected NAME=SPEC", file=sys.stderr)
            return 2
        chains[name] = spec
    for name, spec in chains.items():
        try:
            chains[name] = spec.format(**config.input)
            ops.parse(chains[name])
        except (KeyError, IndexError, ValueError) as e:
            print(f"error: chain {name!r}: {type(e).__name__}: {e} (fields: config.input's)",
                  file=sys.stderr)
            return 2

    work_dir = FLAGS.work_dir or os.path.join(tempfile.gettempdir(), "mgca_input_bench")
    builder = bench.build_dataset(work_dir, FLAGS.num_images, FLAGS.width, FLAGS.height,
                                  max_short_side=FLAGS.max_short_side)
    ctx = input_pipeline.make_context(config, input_pipeline.get_tokenizer(config, builder))
    ctx.tokenizer.tf_tokenize(tf.constant(""), 2)  # make its resource outside a trace
    mean_bytes, mean_px = bench.stored_image_stats(builder)
    print(f"data: {builder.info.splits['train'].num_examples} images from {FLAGS.width}x"
          f"{FLAGS.height} sources, stored by the cc3m builder (max_short_side "
          f"{FLAGS.max_short_side}): mean {mean_px / 1e3:.0f} kpixel, {mean_bytes / 1e3:.1f} kB; "
          f"under {builder.data_dir}")
    source = bench.cached_source(builder)
    rates = alternate(source, chains, ctx, FLAGS.rounds, FLAGS.seconds)
    print(f"\npp_train on one core, images per CPU-second of the process ({FLAGS.rounds} "
          f"alternating rounds of ~{FLAGS.seconds:g}s per chain after a warm-up)")
    first = float(np.median(rates[next(iter(chains))]))
    print(f"{'chain':<10} {'median':>8} {'best':>8} {'ratio':>6}  spec")
    for name, spec in chains.items():
        med = float(np.median(rates[name]))
        print(f"{name:<10} {med:>8.0f} {max(rates[name]):>8.0f} {med / first:>6.2f}  {spec}")
    print("(ratio = median / the first chain's median; per round: "
          + "; ".join(f"{n} " + ",".join(f"{r:.0f}" for r in rs) for n, rs in rates.items()) + ")")
    return 0


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "cc3m.py"), "Config file.")
    flags.DEFINE_string("work_dir", "", "where the generated data set goes "
                        "(default: $TMPDIR/mgca_input_bench; reused if present)")
    flags.DEFINE_integer("num_images", 200, "images in the generated data set")
    flags.DEFINE_integer("width", 683, "source image width (landscape)")
    flags.DEFINE_integer("height", 512, "source image height (landscape)")
    flags.DEFINE_integer("max_short_side", 512, "the builder's max_short_side (0: keep size)")
    flags.DEFINE_integer("rounds", 5, "alternating rounds")
    flags.DEFINE_float("seconds", 2.0, "timed seconds per chain per round")
    flags.DEFINE_multi_string("chain", [], "extra chain NAME=SPEC ({image_size} etc. filled "
                              "from config.input)")
    app.run(lambda argv: sys.exit(main(argv)))
