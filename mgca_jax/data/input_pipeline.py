"""tf.data input pipelines: one path for the embedded scenes and for CC3M.

Training input holds only what `config.input.pp_train` keeps: never the
evaluation masks. Each process reads its own slice of the split. Shuffling and
augmentation are deterministic given `config.seed`, so a run resumed at step s
sees exactly the batches it would have seen (the reader skips s * local_batch
examples before decoding; docs/method.md, "Input").
"""
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mgca_jax.config_check import ConfigError
from mgca_jax.data import ops
from mgca_jax.data.lexicon import DEFAULT_LEXICON, Lexicon, get_extractor
from mgca_jax.data.tokenizer import Tokenizer, TokenizerError, pieces_note, train_tokenizer

EMBEDDED = "mgca_scenes"


def process_0_first(fn, name: str):
    """fn() on process 0, then, once every process has got here, on the others.

    With several processes on one shared data_dir, what fn writes (the generated
    scenes, a trained tokenizer) is written once, by process 0, and read by the rest.
    """
    import jax
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    out = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"mgca_jax: {name}")
    return out if jax.process_index() == 0 else fn()


def get_builder(config):
    """The data set builder named by config.data, prepared (the embedded one is generated)."""
    data_dir = config.data_dir
    if config.data.name == EMBEDDED:
        from mgca_jax.data import scenes_builder
        if config.data.config_name not in scenes_builder.MgcaScenes.builder_configs:
            raise ConfigError(f"config.data.config_name: {EMBEDDED} has no config "
                              f"{config.data.config_name!r}; use one of "
                              f"{', '.join(scenes_builder.MgcaScenes.builder_configs)}")
        # Deterministic: a host that does not share data_dir generates the same scenes itself.
        return process_0_first(lambda: scenes_builder.build(data_dir, config.data.config_name),
                               "embedded data set")
    from mgca_jax.data import cc3m_builder
    if config.data.config_name not in cc3m_builder.Cc3m.builder_configs:
        raise ConfigError(f"config.data.config_name: cc3m has no config "
                          f"{config.data.config_name!r}; use one of "
                          f"{', '.join(cc3m_builder.Cc3m.builder_configs)}")
    builder = cc3m_builder.Cc3m(config=config.data.config_name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"config.data_dir: no prepared '{builder.name}/{builder.builder_config.name}' data set under "
            f"{data_dir} (build it first; see README 'Training on CC3M')")
    return builder


def _skip_image_decoding(builder):
    """Images stay encoded until the `decode` op: skipping examples stays cheap."""
    return {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
            if isinstance(f, tfds.features.Image)}


def _captions(builder, split="train"):
    ds = builder.as_dataset(split=split, decoders=_skip_image_decoding(builder), shuffle_files=False)
    for ex in ds.map(lambda e: e["caption"]).as_numpy_iterator():
        yield ex.decode("utf-8")


def get_tokenizer(config, builder) -> Tokenizer:
    """config.input.tokenizer, or (if empty) one trained on the train captions and cached
    in the builder's data dir (by process 0 only when there are several)."""
    path = config.input.tokenizer
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.input.tokenizer: file {path} does not exist")
        try:
            return Tokenizer(path)
        except TokenizerError as e:
            raise ConfigError(f"config.input.tokenizer: {e}") from None
    import jax
    cache = os.path.join(builder.data_dir, f"spm_{config.input.vocab_size}.model")

    def load_or_train():
        if not os.path.isfile(cache):
            if jax.process_index() > 0:     # every host must share process 0's vocabulary
                raise FileNotFoundError(
                    f"config.input.tokenizer: process {jax.process_index()} does not see {cache}, "
                    "which process 0 trained; put config.data_dir on a file system every host "
                    "shares, or set config.input.tokenizer to a model every host can read")
            print(f"training tokenizer on {builder.name} captions -> {cache}", flush=True)
            try:
                train_tokenizer(_captions(builder), cache, config.input.vocab_size)
            except TokenizerError as e:
                raise ConfigError(f"config.input.vocab_size: {e}") from None
            pieces = Tokenizer(cache).vocab_size
            print(f"trained the tokenizer: {pieces} pieces" + pieces_note(pieces, config.input.vocab_size,
                                                              "config.input.vocab_size"), flush=True)
        return Tokenizer(cache)
    return process_0_first(load_or_train, "tokenizer")


def make_context(config, tokenizer) -> ops.Context:
    lexicon = Lexicon(config.input.get("lexicon") or DEFAULT_LEXICON)
    return ops.Context(tokenizer=tokenizer, lexicon=lexicon,
                       extractor=get_extractor(config.input.object_extractor, lexicon),
                       object_template=config.input.object_template)


def _add_seed(seed):
    def fn(index, ex):
        ex = dict(ex)
        ex["_seed"] = tf.stack([tf.constant(seed, tf.int64), index])
        return ex
    return fn


def train_dataset(config, builder, ctx, start_step=0, process_index=0, process_count=1):
    """Infinite dataset of local batches (global batch / process count)."""
    local_batch = config.batch_size // process_count
    split = tfds.even_splits(config.data.train_split, n=process_count, drop_remainder=True)[process_index]
    read_config = tfds.ReadConfig(shuffle_seed=config.seed, interleave_cycle_length=4,
                                  add_tfds_id=False)
    ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                            decoders=_skip_image_decoding(builder))
    ds = ds.repeat().shuffle(config.input.shuffle_buffer, seed=config.seed + process_index)
    ds = ds.enumerate().map(_add_seed(config.seed * 1000 + process_index))
    ds = ds.skip(start_step * local_batch)
    ds = ds.map(ops.build(config.input.pp_train.format(**config.input), ctx), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(config, builder, ctx, split=None, batch_size=None):
    """Finite, ordered validation batches (last batch may be smaller)."""
    split = split or config.data.eval_split
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=_skip_image_decoding(builder))
    ds = ds.map(ops.build(config.input.pp_eval, ctx), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    return ds.batch(batch_size or config.eval.batch_size).prefetch(2)


def as_numpy(ds):
    for batch in ds.as_numpy_iterator():
        yield {k: np.asarray(v) for k, v in batch.items()}
