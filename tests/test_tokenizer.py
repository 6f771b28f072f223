"""SentencePiece tokenizer: training, Python/TF agreement, round trip."""
import numpy as np
import pytest
import tensorflow as tf

from mgca_jax.data import tokenizer as tok

CAPTIONS = [f"a {c} {s} on a {b} background" for c in ("red", "blue", "green", "tiny")
            for s in ("circle", "square", "star", "ring") for b in ("striped", "noisy", "plain")] * 5


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "t.model")
    tok.train_tokenizer(CAPTIONS, path, vocab_size=64)
    return tok.Tokenizer(path)


def test_round_trip(spm):
    text = "a blue star on a striped background"
    ids = spm.encode(text, 32)
    assert ids[0] == tok.BOS and tok.EOS in ids and len(ids) == 32
    assert ids[ids.index(tok.EOS) + 1:] == [tok.PAD] * (31 - ids.index(tok.EOS))
    assert spm.decode(ids) == text


def test_tf_matches_python_and_truncates(spm):
    texts = ["a red ring", "a tiny square on a plain background " * 4]
    got = spm.tf_tokenize(tf.constant(texts), 12).numpy()
    want = np.array([spm.encode(t, 12) for t in texts])
    np.testing.assert_array_equal(got, want)
    assert got[1, -1] == tok.EOS  # truncated, but still ends with eos
    for text, row in zip(texts, want):  # one scalar caption: the dense path, same ids
        np.testing.assert_array_equal(spm.tf_tokenize(tf.constant(text), 12).numpy(), row)


def test_cli(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CAPTIONS))
    tok.main([f"--input={corpus}", f"--output={tmp_path / 'x.model'}", "--vocab_size=40"])
    assert 8 <= tok.Tokenizer(str(tmp_path / "x.model")).vocab_size <= 40


def test_cli_says_when_the_captions_give_fewer_pieces(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CAPTIONS))
    tok.main([f"--input={corpus}", f"--output={tmp_path / 'x.model'}", "--vocab_size=16000"])
    pieces = tok.Tokenizer(str(tmp_path / "x.model")).vocab_size
    assert pieces < 100  # 16 distinct words cannot make 16000 pieces
    out = capsys.readouterr().out
    assert f"{pieces} pieces from {len(CAPTIONS)} captions (fewer than --vocab_size=16000" in out


def test_one_tokenizer_serves_several_datasets(spm):
    # A fresh instance, so its first tf_tokenize call happens inside a tf.data map function
    # (as in train then eval): the op must not stay bound to that first graph.
    fresh = tok.Tokenizer(spm.model_path)
    texts = ["a red ring", "a blue star on a noisy background"]
    want = np.array([spm.encode(t, 10) for t in texts])
    for _ in range(2):
        ds = tf.data.Dataset.from_tensor_slices(texts).map(lambda s: fresh.tf_tokenize(s, 10))
        np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())), want)
    batched = tf.data.Dataset.from_tensor_slices(texts).batch(2).map(
        lambda s: fresh.tf_tokenize(s, 10))
    np.testing.assert_array_equal(next(batched.as_numpy_iterator()), want)
