"""Input pipeline: ops, object words, masks never in training input, exact resume."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import tiny  # noqa: E402

from mgca_jax.data import input_pipeline, lexicon, ops, scenes  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = tiny.get_config()
    config.data_dir = str(tmp_path_factory.mktemp("data"))
    builder = input_pipeline.get_builder(config)
    tokenizer = input_pipeline.get_tokenizer(config, builder)
    return config, builder, input_pipeline.make_context(config, tokenizer)


def test_parse_spec():
    assert ops.parse("resize(64)|flip_lr|keep('a', 'b')|tokenize(8, key='c')") == [
        ("resize", (64,), {}), ("flip_lr", (), {}), ("keep", ("a", "b"), {}),
        ("tokenize", (8,), {"key": "c"})]
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        ops.parse("resize(3)|nope")
    with pytest.raises(ValueError, match="cannot parse"):
        ops.parse("resize(3")


def test_lexicon_extracts_object_words_in_order():
    lex = lexicon.Lexicon()
    extract = lexicon.get_extractor("lexicon", lex)
    ids = extract(tf.constant("Two Circles and a star!! next to a circle, by a man")).numpy()
    assert [lex.words[i] for i in ids] == ["circle", "star", "man"]
    assert extract(tf.constant("nothing here")).numpy().size == 0
    assert lex.words[:8] == list(scenes.CLASS_NAMES)
    with pytest.raises(ValueError, match="object_extractor"):
        lexicon.get_extractor("spacy", lex)


def test_object_words_op_pads_and_masks(setup):
    _, _, ctx = setup
    fn = ops.build("object_words(3)|object_prompts(10)", ctx)
    ex = fn({"caption": tf.constant("a square and a ring and a square, a star, a cross")})
    words = [ctx.lexicon.words[i] for i in ex["object_ids"].numpy()]
    assert words == ["square", "ring", "star"]
    ex = fn({"caption": tf.constant("a lonely diamond")})
    np.testing.assert_array_equal(ex["object_mask"].numpy(), [True, False, False])
    assert ex["object_ids"].numpy()[1] == -1
    tokens = ex["object_tokens"].numpy()
    assert ctx.tokenizer.decode(tokens[0]) == "a photo of a diamond."
    assert not tokens[1:].any()


def test_training_input_has_no_masks(setup):
    config, builder, ctx = setup
    batch = next(input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx)))
    assert set(batch) == {"image", "tokens", "object_ids", "object_mask", "object_tokens"}
    assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["object_mask"].any(axis=1).all()  # every scene caption names an object
    ev = next(input_pipeline.as_numpy(input_pipeline.eval_dataset(config, builder, ctx)))
    assert set(ev) == {"image", "mask"} and ev["mask"].shape == (32, 32, 32)
    assert ev["image"].dtype == np.uint8         # the predict function normalises


def test_resume_gives_the_same_batches(setup):
    config, builder, ctx = setup
    it = input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx))
    full = [next(it) for _ in range(5)]
    resumed = input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, start_step=3))
    for want in full[3:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_each_process_reads_its_own_half(setup):
    config, builder, ctx = setup
    first = [next(input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, 0, i, 2)))
             for i in range(2)]
    assert first[0]["image"].shape[0] == first[1]["image"].shape[0] == config.batch_size // 2
    assert not np.array_equal(first[0]["image"], first[1]["image"])
