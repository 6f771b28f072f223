"""tf.data input pipelines: one path for the embedded scenes and for CC3M.

Training input holds only what `config.input.pp_train` keeps: never the
evaluation masks. Each process reads its own slice of the split. Shuffling and
augmentation are deterministic given `config.seed`, so a run resumed at step s
sees exactly the batches it would have seen; the reader opens the piece of the
file that holds record s * local_batch and skips only inside it (`train_records`;
docs/method.md, "Input").
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


def _pieces(builder, split, process_index, process_count, piece_size):
    """This process's part of `split` as pieces (file, skip, take): consecutive records of
    one file, at most `piece_size` each. Process p reads records [p*m, (p+1)*m) of the split,
    m = split size // process count (the remainder is dropped)."""
    files, skips, takes = [], [], []
    instructions = builder.info.splits[split].file_instructions
    part = sum(fi.take for fi in instructions) // process_count
    lo, hi, offset = process_index * part, (process_index + 1) * part, 0
    for fi in instructions:
        first, last = max(lo, offset), min(hi, offset + fi.take)  # the part's records in this file
        for start in range(first, last, piece_size):
            files.append(os.fspath(fi.filename))
            skips.append(fi.skip + start - offset)
            takes.append(min(piece_size, last - start))
        offset += fi.take
    if not files:
        raise ConfigError(f"config.data.train_split: {split!r} has {offset} examples, fewer than "
                          f"the {process_count} processes that share it")
    return files, np.asarray(skips, np.int64), np.asarray(takes, np.int64)


def _piece_order(seed, epoch, n_pieces):
    """The order of the pieces in `epoch` (a tf op; the same in graph and eager mode)."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(n_pieces, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))


def train_records(config, builder, start_step=0, process_index=0, process_count=1):
    """Infinite stream of this process's serialized train records, from record
    start_step * local batch on, in O(number of pieces) (never re-reading skipped records).

    Every epoch reads each record of the part once: the pieces (at most
    config.input.shuffle_buffer records of one file) in a seeded per-epoch order, the
    records of each piece in a seeded order. So a record's place in the stream is a
    function of (seed, process, epoch, position): resuming opens the piece at the
    resume position and skips only inside it.
    """
    if builder.info.file_format and builder.info.file_format.value != "tfrecord":
        raise ConfigError(f"config.data: training reads tfrecord files; {builder.name} is stored "
                          f"as {builder.info.file_format.value}")
    local_batch = config.batch_size // process_count
    files, skips, takes = _pieces(builder, config.data.train_split, process_index, process_count,
                                  config.input.shuffle_buffer)
    seed = config.seed * 1000 + process_index
    n_pieces, part = len(files), int(takes.sum())
    epoch, position = divmod(start_step * local_batch, part)
    ends = np.cumsum(takes[_piece_order(seed, epoch, n_pieces).numpy()])
    rank = int(np.searchsorted(ends, position, side="right"))    # the piece holding `position`
    within = position - (int(ends[rank - 1]) if rank else 0)
    files, skips, takes = tf.constant(files), tf.constant(skips), tf.constant(takes)

    def epoch_pieces(e):
        order = _piece_order(seed, e, n_pieces)
        return tf.data.Dataset.from_tensor_slices((tf.fill([n_pieces], e), order))

    def read_piece(e, piece):
        records = tf.data.TFRecordDataset(files[piece]).skip(skips[piece]).take(takes[piece])
        return records.batch(takes[piece])                        # one element: the whole piece

    def shuffle_piece(e, piece, records):
        piece_seed = tf.random.experimental.stateless_fold_in(tf.stack([tf.cast(seed, tf.int64), e]),
                                                               piece + 1)
        return tf.random.experimental.stateless_shuffle(records, seed=piece_seed)

    pieces = tf.data.Dataset.range(epoch, np.iinfo(np.int64).max).flat_map(epoch_pieces).skip(rank)
    ds = pieces.flat_map(lambda e, piece: read_piece(e, piece).map(
        lambda records: shuffle_piece(e, piece, records)))
    return ds.prefetch(1).unbatch().skip(within)     # prefetch: the next piece loads meanwhile


def train_dataset(config, builder, ctx, start_step=0, process_index=0, process_count=1):
    """Infinite dataset of local batches (global batch / process count), from batch
    `start_step` on: the same batches as an uninterrupted run would give."""
    local_batch = config.batch_size // process_count
    decoders = _skip_image_decoding(builder)
    ds = train_records(config, builder, start_step, process_index, process_count)
    ds = ds.map(lambda record: builder.info.features.deserialize_example(record, decoders=decoders),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.enumerate(start_step * local_batch).map(_add_seed(config.seed * 1000 + process_index))
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
