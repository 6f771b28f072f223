"""Mixed precision (config.model.dtype="bfloat16"): bf16 compute, float32 master weights."""
import jax
import jax.numpy as jnp
import numpy as np

from mgca_jax import losses, sharding, train
from mgca_jax.models.two_tower import make_model
from test_train_step import batch, config

# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4 %); through the towers and the
# normalised embeddings the terms moved by 0.03-0.47 % of their values here (pixel the most).
TOLERANCE = 0.03   # relative, per term


def _terms(c, params, b):
    model = make_model(c)
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        out = model.apply({"params": params}, b)
        _, values = losses.total_loss(out, b, c.loss, mesh, jax.random.key(3))
    return out, {k: float(v) for k, v in values.items()}


def test_bf16_loss_terms_match_float32_within_tolerance():
    c32 = config()
    c32.loss.weights.background = 0.3
    c16 = config()
    c16.loss.weights.background = 0.3
    c16.model.dtype = "bfloat16"
    b = batch(c32, n=16)
    params = make_model(c32).init(jax.random.key(0), train.dummy_batch(c32))["params"]
    out32, t32 = _terms(c32, params, b)
    out16, t16 = _terms(c16, params, b)
    assert set(t32) == {"image_text", "object", "region", "pixel", "background"}
    for name in t32:
        assert np.isfinite(t16[name])
        assert abs(t16[name] - t32[name]) <= TOLERANCE * abs(t32[name]), (name, t16[name], t32[name])
    # The bf16 towers did run in bf16 (the embeddings differ), and hand float32 to the losses.
    assert out16["patch_embed"].dtype == jnp.float32
    assert not np.array_equal(out16["patch_embed"], out32["patch_embed"])


def test_bf16_step_keeps_float32_master_weights():
    c = config()
    c.model.dtype = "bfloat16"
    c.warmup_steps = 0
    c.loss.weights = {"image_text": 1.0}   # the step's precision handling, not the terms: cheaper
    model = make_model(c)
    tx, schedule = train.make_optimizer(c)
    init, abstract = train.abstract_state(model, tx, c)
    mesh = sharding.make_mesh()
    state_sh = sharding.state_shardings(abstract, mesh)
    step, _ = train.make_train_step(model, tx, schedule, c, mesh)
    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=state_sh)()
        before = jax.device_get(state["params"])
        state, metrics = train.jit_train_step(step, state_sh, mesh)(state, batch(c), jax.random.key(0))
    dtypes = {x.dtype for x in jax.tree.leaves((state["params"], state["opt_state"]))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    # Some updates are below bf16's resolution of the weight (LayerNorm scales at 1.0 move by
    # ~lr = 1e-3 < 2^-7): they land in the float32 copy, and would vanish in a bf16 one.
    bf16 = lambda a: np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32))  # noqa: E731
    lost = [np.sum((np.asarray(new) != old) & (bf16(new) == bf16(old)))
            for new, old in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(before))]
    assert sum(lost) > 0
