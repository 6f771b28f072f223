"""Every config loads, passes the checks, and builds its model."""
import importlib.util
import os

import jax
import pytest

from mgca_jax import config_check, losses
from mgca_jax.models.two_tower import make_model
from mgca_jax.train import dummy_batch

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name", ["demo", "tiny", "cc3m", "shape"])
def test_config_is_valid(name):
    c = load(name)
    config_check.check_config(c, 8)
    c.model.vocab_size = 1000
    shapes = jax.eval_shape(lambda: make_model(c).init(jax.random.key(0), dummy_batch(c)))
    assert jax.tree.leaves(shapes)


def test_cc3m_is_paper_scale():
    c = load("cc3m")
    assert (c.model.image_variant, c.input.image_size, c.batch_size) == ("S/16", 224, 4096)
    assert c.input.max_len == 77 and c.model.text_variant == "S"
    assert c.input.vocab_size == 16000  # the CC3M tokenizer, not the toy world's 512
    assert set(losses.active_terms(c.loss)) == {"image_text", "object", "region", "pixel", "background"}


def test_bad_values_name_the_field():
    c = load("demo")
    c.loss.weights.bogus = 1.0
    with pytest.raises(config_check.ConfigError, match="config.loss.weights"):
        config_check.check_config(c, 1)
    c = load("demo")
    c.sharding.params = "zero3"
    with pytest.raises(config_check.ConfigError, match="config.sharding.params"):
        config_check.check_config(c, 1)
    for field, value in (("loss.image_text_pool", "max"), ("loss.image_text_topk", 0.0),
                         ("loss.background_fraction", 1.5), ("model.attention_radius", "1,2"),
                         ("loss.object_query", "self"), ("loss.presence_topk", 2.0),
                         ("eval.test_scale", 0.0), ("eval.test_scale", -1.0)):
        c = load("demo")
        group, name = field.split(".")
        c[group][name] = value
        with pytest.raises(config_check.ConfigError, match=f"config.{field}"):
            config_check.check_config(c, 1)
