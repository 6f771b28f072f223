"""mgca_jax: Multi-Grained Cross-modal Alignment for open-vocabulary segmentation in JAX."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow==2.21.0",
    "tensorflow-text==2.21.1",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",   # tensorflow-datasets needs it to prepare builders
    "ml_collections==1.1.0",
    "numpy==2.4.6",
    "clu==0.0.12",
    "tensorboard==2.21.0",          # clu writes TensorBoard summaries but does not declare it
    "sentencepiece==0.2.3",
    "pillow==13.0.0",
    "scipy==1.17.1",                # connected components (evaluation/failure_modes.py)
    "safetensors==0.8.0",           # exports (mgca_jax/export.py): parameters without pickle
]

setup(
    name="mgca_jax",
    version="0.1.0",
    description="MGCA (arXiv 2403.03707) in JAX/Flax: segmentation learned from captions",
    packages=find_packages(include=["mgca_jax", "mgca_jax.*"]),
    package_data={"mgca_jax.data": ["lexicon/*.txt"]},
    python_requires=">=3.11,<3.14",   # Colab runs 3.12/3.13; the pinned stack has cp311-cp313 wheels
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": [
        "pytest==9.2.0", "webdataset==1.0.2",
        # notebooks/ executed in CI (tests/test_notebooks.py)
        "nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0", "matplotlib==3.11.2",
    ]},
)
