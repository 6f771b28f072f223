"""Reading trained checkpoints for the tools: shapes are checked against the config."""
import json
import os
import sys

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import tiny  # noqa: E402

from mgca_jax import checkpoints  # noqa: E402
from mgca_jax.models.two_tower import make_model, random_params  # noqa: E402


def save_run(wd, config, params):
    with ocp.CheckpointManager(str(wd / "checkpoints"),
                               options=ocp.CheckpointManagerOptions(create=True)) as mngr:
        mngr.save(3, args=ocp.args.StandardSave({"step": jnp.asarray(3), "params": params}))
        mngr.wait_until_finished()
    (wd / "config.json").write_text(json.dumps(config.to_dict()))


def tiny_config(embed_dim=128):
    c = tiny.get_config()
    c.model.vocab_size = 64
    c.model.embed_dim = embed_dim
    return c


def test_load_restores_the_saved_params(tmp_path):
    c = tiny_config()
    params = random_params(make_model(c), c.input.image_size, c.input.max_len, seed=1)
    save_run(tmp_path, c, params)
    loaded = checkpoints.load(str(tmp_path))
    assert loaded.step == 3
    assert (loaded.params["image_head"]["kernel"] == params["image_head"]["kernel"]).all()


def test_config_of_another_shape_is_named(tmp_path):
    """config.json says embed_dim 64, the checkpoint holds 128: one line naming a param."""
    c = tiny_config(128)
    save_run(tmp_path, tiny_config(64), random_params(make_model(c), 32, 16))
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.load(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "param" in msg and "128" in msg and "64" in msg, msg
