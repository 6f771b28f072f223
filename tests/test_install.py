"""A clean install on Python 3.13 runs configs/tiny.py end to end (issue 13).

The repository's committed HEAD is exported with `git archive` into a temporary folder (no
.venv, data or workdirs), a python3.13 venv is made there, `pip install .` installs the project
from setup.py alone (no requirements.lock: what a Colab or cluster user types), and

  python -m mgca_jax.main --config=configs/tiny.py --workdir=workdirs/tiny

runs in the clean copy. pip's own cache is used, so a CI runner that keeps ~/.cache/pip pays
the downloads once. Every step's time is printed. A failed install or run fails the test; it
skips only when no python3.13 runs (PATH, or pyenv's versions folder).
"""
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def find_python313():
    """A python3.13 that runs: the one on PATH, else pyenv's (its shim may not select 3.13)."""
    candidates = [shutil.which("python3.13")]
    candidates += sorted(str(p) for p in Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob(
        "versions/3.13*/bin/python3.13"))
    for exe in filter(None, candidates):
        ok = subprocess.run([exe, "-c", "import sys; assert sys.version_info[:2] == (3, 13)"],
                            capture_output=True, timeout=60).returncode == 0
        if ok:
            return exe
    return None


PYTHON = find_python313()


def _run(args, cwd, env, timeout, what):
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, (f"{what} failed (exit {proc.returncode}):\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, seconds


@pytest.mark.skipif(PYTHON is None, reason="no working python3.13 (PATH or ~/.pyenv/versions/3.13*)")
def test_clean_python313_install_runs_tiny(tmp_path):
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
    venv = tmp_path / "venv313"
    _, t_venv = _run([PYTHON, "-m", "venv", str(venv)], tmp_path, env, 300, "python3.13 -m venv")
    py = str(venv / "bin" / "python")
    version, _ = _run([py, "-c", "import sys; print(sys.version_info[:2])"], tmp_path, env, 60, "venv python")
    assert version.stdout.strip() == "(3, 13)", version.stdout
    _, t_install = _run([py, "-m", "pip", "install", "-q", "."], src, env, 3000,
                        "pip install . (python3.13)")
    proc, t_run = _run([py, "-m", "mgca_jax.main", "--config=configs/tiny.py", "--workdir=workdirs/tiny"],
                       src, env, 1500, "python -m mgca_jax.main --config=configs/tiny.py (python3.13)")
    # The run ended with its evaluation and a checkpoint of its last step (tiny: 6 steps).
    assert (src / "workdirs" / "tiny" / "eval_step6.json").is_file(), proc.stdout[-2000:]
    assert (src / "workdirs" / "tiny" / "checkpoints" / "6").is_dir()
    # The package came from the venv, not from this checkout.
    where, _ = _run([py, "-c", "import mgca_jax; print(mgca_jax.__file__)"], tmp_path, env, 60, "import")
    assert str(venv) in where.stdout, where.stdout
    print(f"\npython3.13 clean install: venv {t_venv:.1f}s, pip install . {t_install:.1f}s, "
          f"tiny run {t_run:.1f}s, total {t_venv + t_install + t_run:.1f}s")
