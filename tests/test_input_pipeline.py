"""Input pipeline: ops, object words, masks never in training input, exact resume."""
import os
import sys
import time

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


def _small_pieces(config, size=12):
    config = config.copy_and_resolve_references()
    config.input.shuffle_buffer = size     # many pieces, not aligned with the batches
    return config


def test_each_epoch_reads_the_process_part_once_in_a_new_order(setup):
    config, builder, _ = setup
    config = _small_pieces(config)
    n = builder.info.splits["train"].num_examples
    part = n // 2
    decoders = input_pipeline._skip_image_decoding(builder)
    seen = []
    for p in range(2):
        stream = input_pipeline.train_records(config, builder, 0, p, 2).take(2 * part)
        images = [builder.info.features.deserialize_example(r, decoders=decoders)["image"].numpy()
                  for r in stream]
        # Reference: tfds's own reader of records [p*part, (p+1)*part) of the split, in file order.
        ref = builder.as_dataset(split=f"train[{p * part}:{(p + 1) * part}]", shuffle_files=False,
                                 decoders=decoders)
        want = sorted(ex["image"] for ex in ref.as_numpy_iterator())
        assert len(want) == part
        for epoch in range(2):
            assert sorted(images[epoch * part:(epoch + 1) * part]) == want
        assert images[:part] != images[part:]               # a new order every epoch
        assert images[:part] != [ex["image"] for ex in ref.as_numpy_iterator()]  # shuffled
        seen.append(set(images))
    assert not seen[0] & seen[1]                            # the processes' parts are disjoint


def test_resume_across_an_epoch_boundary(setup):
    config, builder, ctx = setup
    config = _small_pieces(config)
    steps_per_epoch = builder.info.splits["train"].num_examples // config.batch_size
    it = input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, 0, 1, 2))
    full = [next(it) for _ in range(steps_per_epoch + 3)]
    for start in (steps_per_epoch - 1, steps_per_epoch + 1):
        resumed = input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, start, 1, 2))
        for want in full[start:]:
            got = next(resumed)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])


def test_resume_at_a_very_late_step_is_cheap(setup):
    """Step 10**9 (tens of millions of epochs): the old reader would re-read 1.6e10 records."""
    config, builder, ctx = setup
    config = _small_pieces(config)
    late = 10**9
    t0 = time.perf_counter()
    at = next(input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, late)))
    assert time.perf_counter() - t0 < 60
    before = input_pipeline.as_numpy(input_pipeline.train_dataset(config, builder, ctx, late - 1))
    next(before)
    want = next(before)
    for key in want:
        np.testing.assert_array_equal(at[key], want[key])
