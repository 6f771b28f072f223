"""A clean install on Python 3.12 and 3.13 works; on 3.13 it runs configs/tiny.py end to end (issue 13).

For each version found (PATH, or pyenv's versions folder), the repository's committed HEAD is
exported with `git archive` into a temporary folder (no .venv, data or workdirs), a venv of that
version is made there, and `pip install .` installs the project from setup.py alone (no
requirements.lock: what a Colab or cluster user types). Then, in the clean copy:

- the full check (3.13 always; every version outside CI):
    python -m mgca_jax.main --config=configs/tiny.py --workdir=workdirs/tiny
- the quick check (the other versions when CI=true): the install runs with `--no-compile` (the
  same wheels and native libraries, without byte-compiling every module ahead of time, which took
  most of the install's time here), then one process imports every compiled dependency and
  mgca_jax's modules and runs one jitted forward pass of the tiny config's model.

The install is the part that can differ between versions (wheels, native libraries), so every
version installs; the quick check saves the tiny run and most of the install's time per extra
version in CI. pip's own cache is used, so a CI runner that keeps ~/.cache/pip pays the downloads
once. Every step's time is printed. A failed install or run fails the test; a version skips only
when no interpreter of it runs.
"""
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("3.12", "3.13")
FULL_IN_CI = "3.13"          # the end-to-end check; the newest version setup.py allows
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

QUICK_CHECK = """
import jax, jax.numpy as jnp, numpy as np
import tensorflow, tensorflow_text, tensorflow_datasets, sentencepiece, orbax.checkpoint
import safetensors, scipy.ndimage, PIL.Image
import mgca_jax
from mgca_jax import api, evaluate, export, inference, segment, train
from mgca_jax.models import two_tower
import tiny                                    # configs/tiny.py
config = tiny.get_config()
config.model.vocab_size = config.input.vocab_size
model = two_tower.make_model(config)
size = config.input.image_size
params = two_tower.random_params(model, size, config.input.max_len)
images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)), jnp.float32)
out = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_image))(params, images)
patches = np.asarray(out["patch_embed"])
assert patches.shape[:2] == (2, (size // 8) ** 2) and np.isfinite(patches).all(), patches.shape
print("quick check:", mgca_jax.__file__, "jax", jax.__version__, "tensorflow", tensorflow.__version__,
      "patch embeddings", patches.shape)
"""


def find_python(version):
    """A python of `version` that runs: the one on PATH, else pyenv's (its shim may select another)."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(str(p) for p in Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob(
        f"versions/{version}.*/bin/python{version}"))
    check = f"import sys; assert sys.version_info[:2] == {tuple(map(int, version.split('.')))}"
    for exe in filter(None, candidates):
        if subprocess.run([exe, "-c", check], capture_output=True, timeout=60).returncode == 0:
            return exe
    return None


def _run(args, cwd, env, timeout, what):
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}):\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, seconds


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_install(tmp_path, version):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no working python{version} (PATH or ~/.pyenv/versions/{version}.*)")
    full = version == FULL_IN_CI or not IN_CI
    archive = tmp_path / "head.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), "HEAD"], cwd=REPO,
                   check=True, timeout=120)
    src = tmp_path / "mgca_jax"
    with tarfile.open(archive) as tar:
        tar.extractall(src, filter="data")
    assert (src / "setup.py").is_file() and not (src / ".venv").exists()

    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "XLA_FLAGS", "MGCA_SMOKE")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    venv = tmp_path / f"venv{version}"
    _, t_venv = _run([python, "-m", "venv", str(venv)], tmp_path, env, 300, f"python{version} -m venv")
    py = str(venv / "bin" / "python")
    found, _ = _run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], tmp_path, env, 60,
                    "venv python")
    assert found.stdout.strip() == version, found.stdout
    flags = [] if full else ["--no-compile"]
    install = " ".join(["pip install .", *flags])
    _, t_install = _run([py, "-m", "pip", "install", "-q", ".", *flags], src, env, 3000,
                        f"{install} (python{version})")
    if full:
        what = "tiny run"
        proc, t_check = _run([py, "-m", "mgca_jax.main", "--config=configs/tiny.py",
                              "--workdir=workdirs/tiny"], src, env, 1500,
                             f"python -m mgca_jax.main --config=configs/tiny.py (python{version})")
        # The run ended with its evaluation and a checkpoint of its last step (tiny: 6 steps).
        assert (src / "workdirs" / "tiny" / "eval_step6.json").is_file(), proc.stdout[-2000:]
        assert (src / "workdirs" / "tiny" / "checkpoints" / "6").is_dir()
    else:
        what = "quick check"
        proc, t_check = _run([py, "-c", QUICK_CHECK], src / "configs", env, 600,
                             f"quick check (python{version})")
        assert "quick check:" in proc.stdout, proc.stdout[-2000:]
    # The package came from the venv, not from this checkout.
    where, _ = _run([py, "-c", "import mgca_jax; print(mgca_jax.__file__)"], tmp_path, env, 60, "import")
    assert str(venv) in where.stdout, where.stdout
    print(f"\npython{version} clean install: venv {t_venv:.1f}s, {install} {t_install:.1f}s, "
          f"{what} {t_check:.1f}s, total {t_venv + t_install + t_check:.1f}s")
