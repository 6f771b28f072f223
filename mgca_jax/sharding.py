"""Device mesh and shardings.

One mesh axis, "data", with Auto axis type: jit propagates shardings from the
in/out shardings we give it (GSPMD), and the loss terms that need explicit
collectives run under `jax.shard_map` over the same axis.
Parameters are either replicated or, with `fsdp`, each large array is split
along its largest dimension that the device count divides.
"""
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over "data"."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _fsdp_spec(shape, n: int, min_size: int) -> P:
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in np.argsort(shape)[::-1]:
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh: Mesh, mode: str = "replicated", min_size: int = 2 ** 14):
    """Shardings for a pytree of arrays/ShapeDtypeStructs: "replicated" or "fsdp"."""
    if mode == "replicated":
        return jax.tree.map(lambda _: replicated(mesh), abstract_state)
    if mode == "fsdp":
        n = mesh.shape[DATA]
        return jax.tree.map(
            lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), n, min_size)), abstract_state)
    raise ValueError(f"config.sharding.params: unknown mode {mode!r}; use 'replicated' or 'fsdp'")
