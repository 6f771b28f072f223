"""The pure train step and the optimizer, against hand-computed expectations."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import tiny  # noqa: E402

from mgca_jax import sharding, train  # noqa: E402
from mgca_jax.models.two_tower import make_model  # noqa: E402


def config():
    c = tiny.get_config()
    c.model.vocab_size = 64
    return c


def test_weight_decay_skips_vectors_and_scalars():
    """AdamW with zero gradients: a matrix decays by exactly lr * wd (first step, no warm-up);
    biases, norm scales and the logit scale do not decay."""
    c = config()
    c.warmup_steps = 0
    c.grad_clip = 0.0
    tx, schedule = train.make_optimizer(c)
    params = {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 2.0),
              "log_logit_scale": jnp.asarray(2.0)}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = jax.tree.map(lambda p, u: np.asarray(p + u, np.float64), params, updates)
    lr = float(schedule(0))
    assert lr == pytest.approx(c.lr)
    np.testing.assert_allclose(new["kernel"], 2.0 * (1 - lr * c.weight_decay), rtol=1e-6)
    np.testing.assert_array_equal(new["bias"], 2.0)
    np.testing.assert_array_equal(new["log_logit_scale"], 2.0)


def batch(c, n=8, seed=0):
    r = np.random.default_rng(seed)
    i = c.input
    ids = r.integers(0, 6, size=(n, i.num_objects)).astype(np.int32)
    mask = np.ones((n, i.num_objects), bool)
    return {"image": r.normal(size=(n, i.image_size, i.image_size, 3)).astype(np.float32),
            "tokens": np.concatenate([np.full((n, 1), 2), r.integers(4, 64, (n, 6)), np.full((n, 1), 3),
                                      np.zeros((n, i.max_len - 8), int)], 1).astype(np.int32),
            "object_ids": ids, "object_mask": mask,
            "object_tokens": r.integers(4, 64, (n, i.num_objects, i.object_max_len)).astype(np.int32)}


def test_each_step_draws_new_anchors():
    """The step folds its number into the rng: the same params and batch at step 0 and at
    step 1 give the same rng-free terms and different sampled pixel anchors."""
    c = config()
    c.loss.pixel_anchors = 1          # 1 of the 4 confident patches per image: sampling matters
    model = make_model(c)
    tx, schedule = train.make_optimizer(c)
    init, _ = train.abstract_state(model, tx, c)
    state = init()
    mesh = sharding.make_mesh(jax.devices()[:1])
    step, _ = train.make_train_step(model, tx, schedule, c, mesh)
    step = jax.jit(step)
    b, rng = batch(c), jax.random.key(0)
    _, m0 = step(state, b, rng)
    _, m0_again = step(state, b, rng)
    _, m1 = step({**state, "step": state["step"] + 1}, b, rng)
    assert float(m0["loss_pixel"]) == float(m0_again["loss_pixel"])        # pure
    for term in ("image_text", "object", "region"):
        assert float(m0[f"loss_{term}"]) == float(m1[f"loss_{term}"]), term
    assert float(m0["loss_pixel"]) != float(m1["loss_pixel"])
    assert np.isfinite([float(v) for v in m1.values()]).all()


def test_last_step_is_saved_off_the_checkpoint_grid(tmp_path):
    """total_steps not a multiple of checkpoint_every: the final step is still saved."""
    import orbax.checkpoint as ocp
    c = config()
    c.model.vocab_size = -1
    c.data_dir = str(tmp_path / "data")
    os.makedirs(c.data_dir)
    c.total_steps, c.checkpoint_every, c.eval.every = 3, 100, 0
    result = train.train_and_evaluate(c, str(tmp_path / "wd"))
    assert np.isfinite(result["miou"])
    with ocp.CheckpointManager(str(tmp_path / "wd" / "checkpoints")) as mngr:
        assert mngr.all_steps() == [3]
