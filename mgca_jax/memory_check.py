"""Pre-flight memory estimate: does one training step's batch fit in memory?

Traced, never compiled or run: the towers' forward pass for one example is traced
to a jaxpr (a second or two), and the bytes of every array it produces are summed.
Backprop keeps most of them alive, so this approximates the activation memory per
example. It does not count XLA's fusion (which saves memory) nor the backward
pass's own temporaries (which cost memory), so it is an estimate, not a bound.
"""
import os

import jax
import numpy as np


def _jaxpr_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        subs = [p for v in eqn.params.values() for p in (v if isinstance(v, (tuple, list)) else (v,))
                if hasattr(p, "eqns") or hasattr(getattr(p, "jaxpr", None), "eqns")]
        if subs:
            total += sum(_jaxpr_bytes(getattr(s, "jaxpr", s)) for s in subs)
            continue
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                total += int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize
    return total


def activation_bytes_per_example(config) -> int:
    """Bytes the towers' forward pass produces for one training example (see module doc)."""
    from mgca_jax import losses
    from mgca_jax.models.two_tower import make_model
    config = config.copy_and_resolve_references()
    if config.model.vocab_size == -1:
        config.model.vocab_size = config.input.vocab_size
    model = make_model(config)
    i = config.input
    batch = {"image": jax.ShapeDtypeStruct((1, i.image_size, i.image_size, 3), np.float32),
             "tokens": jax.ShapeDtypeStruct((1, i.max_len), np.int32),
             "object_tokens": jax.ShapeDtypeStruct((1, i.num_objects, i.object_max_len), np.int32)}
    params = jax.eval_shape(lambda b: model.init(jax.random.key(0), b)["params"], batch)
    with_objects = losses.needs_objects(config.loss)
    jaxpr = jax.make_jaxpr(lambda p, b: model.apply({"params": p}, b, with_objects=with_objects))(
        params, batch)
    return _jaxpr_bytes(jaxpr.jaxpr)


def device_memory_bytes(device) -> int | None:
    """Memory one device may use: its allocator's limit, or the host's RAM for CPU devices."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // jax.local_device_count()
        except (ValueError, OSError):
            return None
    return None


MARGIN = 2  # the estimate ran 1.7x XLA's own figure for configs/cc3m.py; reject only beyond 2x


def check_batch_fits(config) -> str | None:
    """A one-line error if the estimated activations of a device's share of the batch exceed
    MARGIN times its memory; None otherwise or if the memory is unknown."""
    memory = device_memory_bytes(jax.local_devices()[0])
    if not memory:
        return None
    per_device = config.batch_size // jax.device_count()
    per_example = activation_bytes_per_example(config)
    need = per_example * per_device
    if need <= MARGIN * memory:
        return None
    gib = 2 ** 30
    return (f"config.batch_size: global batch {config.batch_size} is {per_device} examples per "
            f"device; their activations need an estimated {need / gib:.0f} GiB "
            f"({per_example / 2**20:.0f} MiB per example, traced forward pass), more than twice the "
            f"{memory / gib:.1f} GiB a {jax.local_devices()[0].platform} device has; use more "
            "devices or a smaller batch")
