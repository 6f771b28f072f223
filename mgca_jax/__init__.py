"""mgca_jax: MGCA (arXiv 2403.03707) in JAX/Flax. `mgca_jax.load(EXPORT_DIR)` gives a trained model."""


def load(directory: str):
    """The model exported to `directory` by `python -m mgca_jax.export` (see mgca_jax/api.py)."""
    from mgca_jax.api import load as _load
    return _load(directory)
