"""SentencePiece tokenizer: training (CLI) and in-graph use with tensorflow-text.

Ids: 0 pad, 1 unk, 2 bos, 3 eos. A tokenised sequence is [bos, pieces..., eos]
padded with 0 to max_len (pieces are truncated so eos always fits).

Train on a caption file (one caption per line):
  python -m mgca_jax.data.tokenizer --input=captions.txt --output=spm.model --vocab_size=16000
"""
import io
import os
import re
import sys
import tempfile
from typing import Iterable

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or loaded (one-line message)."""


def train_tokenizer(captions: Iterable[str], output: str, vocab_size: int) -> str:
    """Trains a unigram SentencePiece model and writes it atomically to `output`.

    `vocab_size` is a cap: captions with few distinct words give fewer pieces
    (`Tokenizer(output).vocab_size` says how many).
    """
    import sentencepiece as spm
    captions = [c for c in captions if c.strip()]
    if not captions:
        raise TokenizerError("no captions to train on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
            pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, normalization_rule_name="nmt_nfkc_cf",
            minloglevel=2, num_threads=os.cpu_count() or 1)
    except RuntimeError as e:
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
        if need:
            raise TokenizerError(
                f"vocab size {vocab_size} is too small: these captions need at least "
                f"{need.group(1)} pieces (their characters and the 4 special ids)") from None
        raise TokenizerError(f"sentencepiece: {str(e).splitlines()[0]}") from None
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out_dir, delete=False, suffix=".tmp") as f:
        f.write(model.getvalue())
    os.replace(f.name, output)
    return output


def pieces_note(pieces: int, vocab_size: int, what: str) -> str:
    """Says so when the captions gave fewer pieces than asked for."""
    if pieces >= vocab_size:
        return ""
    return f" (fewer than {what}={vocab_size}: these captions support no more)"


class Tokenizer:
    """Wraps one SentencePiece model for Python and for tf.data graphs."""

    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer model {model_path} does not exist")
        with open(model_path, "rb") as f:
            self.model_bytes = f.read()
        import sentencepiece as spm
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        except RuntimeError:
            raise TokenizerError(f"{model_path} is not a SentencePiece model") from None
        self.model_path = model_path
        self._tf = None

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str, max_len: int) -> list[int]:
        ids = self._sp.encode(text)[: max_len - 2]
        return ([BOS] + ids + [EOS] + [PAD] * max_len)[:max_len]

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) > EOS])

    def tf_tokenize(self, text, max_len: int):
        """Scalar or [n] string tensor -> int32 [max_len] or [n, max_len] (for tf.data)."""
        import tensorflow as tf
        import tensorflow_text as tf_text
        if self._tf is None:
            # The op owns a TF resource. Created inside a tf.data map function it would belong
            # to that function's graph, and every later dataset (e.g. eval after train) would
            # fail with a SymbolicTensor error. init_scope lifts creation to the eager context,
            # so every graph captures the same handle.
            with tf.init_scope():
                self._tf = tf_text.SentencepieceTokenizer(model=self.model_bytes, out_type=tf.int32)
        text = tf.convert_to_tensor(text)
        if text.shape.rank == 0:  # one caption (per-example pipelines): dense ids, no ragged ops
            ids = self._tf.tokenize(text)[: max_len - 2]
            ids = tf.concat([[BOS], ids, [EOS]], axis=0)
            ids = tf.pad(ids, [[0, max_len - tf.shape(ids)[0]]], constant_values=PAD)
            return tf.ensure_shape(ids, [max_len])
        ids = self._tf.tokenize(tf.reshape(text, [-1]))[:, : max_len - 2]
        n = tf.shape(ids.row_lengths())[0]
        ids = tf.concat([tf.fill([n, 1], BOS), ids, tf.fill([n, 1], EOS)], axis=1)
        return ids.to_tensor(default_value=PAD, shape=[None, max_len])


def main(argv):
    from mgca_jax.cli_errors import Parser, fail
    parser = Parser(prog="python -m mgca_jax.data.tokenizer",
                    description="Train a SentencePiece tokenizer on captions.")
    parser.add_argument("--input", required=True, help="text file, one caption per line")
    parser.add_argument("--output", required=True, help="where to write the .model file")
    parser.add_argument("--vocab_size", type=int, default=16000,
                        help="the most pieces; few distinct captions give fewer")
    args = parser.parse_args(argv)
    if args.vocab_size < 1:
        fail(f"--vocab_size: expected a positive integer, got {args.vocab_size}")
    if not os.path.isfile(args.input):
        fail(f"--input: file {args.input} does not exist")
    with open(args.input, encoding="utf-8", errors="replace") as f:
        captions = [line.strip() for line in f if line.strip()]
    if not captions:
        fail(f"--input: {args.input} holds no captions")
    if os.path.isdir(args.output):
        fail(f"--output: {args.output} is a directory; give a file name such as spm.model")
    try:
        train_tokenizer(captions, args.output, args.vocab_size)
    except TokenizerError as e:
        fail(f"--vocab_size: {e}" if "vocab size" in str(e) else e)
    pieces = Tokenizer(args.output).vocab_size
    print(f"wrote {args.output}: {pieces} pieces from {len(captions)} captions"
          + pieces_note(pieces, args.vocab_size, "--vocab_size"))


if __name__ == "__main__":
    main(sys.argv[1:])
