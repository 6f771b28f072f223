"""The bad-input table: every wrong turn a new user took (issue 16) plus those tested before.

Each row runs one command line and asserts: exit status exactly 2, one line on stderr,
`error: ...` naming the field, file or flag, and nothing written (the workdir, the output
file, the data dir are as before). Rows that stop before TensorFlow starts take about a second.
"""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mgca_jax import config_check

REPO = Path(__file__).resolve().parents[1]
MAIN = [sys.executable, "-m", "mgca_jax.main"]
TOK = [sys.executable, "-m", "mgca_jax.data.tokenizer"]
BUILD = [sys.executable, "-m", "mgca_jax.data.cc3m_builder"]
TINY, CC3M = str(REPO / "configs" / "tiny.py"), str(REPO / "configs" / "cc3m.py")
CAPTIONS = "\n".join(f"a {c} {s} on a table" for c in ("red", "blue") for s in ("cup", "dog")) + "\n"

# (row, command with {T} = the row's tmp dir, env overrides, what the line must contain)
ROWS = [
    ("config file missing", MAIN + ["--config={T}/nope.py", "--workdir={T}/wd"], {},
     "--config: file {T}/nope.py does not exist"),
    ("config field misspelt", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.bach_size=8"], {},
     "--config.bach_size=8: config has no field 'bach_size' (did you mean 'batch_size'?)"),
    ("nested field misspelt", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.loss.weights.pixl=1"],
     {}, "config has no field 'pixl' (did you mean 'pixel'?)"),
    ("value of the wrong type", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.lr=abc"], {},
     "--config.lr=abc"),
    ("unknown data set name", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.data.name=cc3mm"], {},
     "config.data.name: unknown data set 'cc3mm'"),
    ("data dir missing", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.data_dir=/nonexistent"], {},
     "config.data_dir: directory /nonexistent does not exist"),
    ("data dir is a URL", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.data_dir=gs://bucket/tfds"],
     {}, "config.data_dir: gs://bucket/tfds is a URL"),
    ("workdir is a URL", MAIN + [f"--config={TINY}", "--workdir=gs://bucket/run"], {}, "--workdir: gs://bucket/run"),
    ("workdir missing", MAIN + [f"--config={TINY}"], {}, "--workdir is required"),
    ("unknown ViT variant", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.model.image_variant=Q/16"],
     {}, "config.model.image_variant"),
    ("batch does not split over devices", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.batch_size=12"],
     {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, "config.batch_size: global batch 12"),
    ("batch far too big for memory", MAIN + [f"--config={CC3M}", "--workdir={T}/wd"], {},
     "config.batch_size: global batch 4096 is 4096 examples per device; their activations need an estimated"),
    ("tokenizer is not a model", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.input.tokenizer={T}/caps.txt"],
     {}, "config.input.tokenizer: {T}/caps.txt is not a SentencePiece model"),
    ("tokenizer missing", MAIN + [f"--config={TINY}", "--workdir={T}/wd", "--config.input.tokenizer={T}/no.model"],
     {}, "config.input.tokenizer: file {T}/no.model does not exist"),
    ("cc3m config name unknown", MAIN + [f"--config={CC3M}", "--workdir={T}/wd", "--config.data_dir={T}/tfds",
                                         "--config.data.config_name=bogus"], {"MGCA_SMOKE": "1"},
     "config.data.config_name: cc3m has no config 'bogus'"),
    ("cc3m config name honoured, not built", MAIN + [f"--config={CC3M}", "--workdir={T}/wd", "--config.data_dir={T}/tfds",
                                                     "--config.data.config_name=original"], {"MGCA_SMOKE": "1"},
     "config.data_dir: no prepared 'cc3m/original' data set under {T}/tfds"),
    ("tokenizer vocab too small", TOK + ["--input={T}/caps.txt", "--output={T}/out.model", "--vocab_size=10"], {},
     "--vocab_size: vocab size 10 is too small"),
    ("tokenizer vocab not positive", TOK + ["--input={T}/caps.txt", "--output={T}/out.model", "--vocab_size=0"], {},
     "--vocab_size: expected a positive integer"),
    ("tokenizer captions empty", TOK + ["--input={T}/empty.txt", "--output={T}/out.model"], {},
     "--input: {T}/empty.txt holds no captions"),
    ("tokenizer captions missing", TOK + ["--input={T}/none.txt", "--output={T}/out.model"], {},
     "--input: file {T}/none.txt does not exist"),
    ("tokenizer output flag missing", TOK + ["--input={T}/caps.txt"], {}, "--output"),
    ("builder manual dir missing", BUILD + ["--manual_dir={T}/nowhere", "--data_dir={T}/tfds"], {},
     "--manual_dir: manual dir {T}/nowhere does not exist"),
    ("builder manual dir without train tars", BUILD + ["--manual_dir={T}/valonly", "--data_dir={T}/tfds"], {},
     "--manual_dir: manual dir {T}/valonly holds no gcc-train-*.tar"),
    ("builder flag of the wrong type", BUILD + ["--manual_dir={T}/valonly", "--data_dir={T}/tfds", "--num_workers=x"],
     {}, "--num_workers"),
    ("evaluate workdir missing", [sys.executable, "-m", "mgca_jax.evaluate", "--workdir={T}/nowhere",
                                  "--dataset=voc21", "--data_dir={T}"], {}, "--workdir"),
    ("launcher: bare PATH, misspelt field", [str(REPO / "launch" / "local_multiprocess.sh"), "2", f"--config={TINY}",
                                             "--workdir={T}/wd", "--config.bach_size=8"],
     {"PATH": "/usr/bin:/bin", "LOG_PREFIX": "{T}/logs/rank"},
     "rank 0 exited 2 ({T}/logs/rank0.log): error: --config.bach_size=8: config has no field 'bach_size'"),
]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if "logs" not in p.parts}


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_row(row, tmp_path):
    name, command, env_extra, needle = row
    t = str(tmp_path)
    (tmp_path / "wd").mkdir()
    (tmp_path / "wd" / "config.json").write_text("{}\n")   # an existing run must stay untouched
    (tmp_path / "tfds").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "caps.txt").write_text(CAPTIONS)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "valonly").mkdir()
    with tarfile.open(tmp_path / "valonly" / "gcc-val-00000.tar", "w"):
        pass
    before = _snapshot(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MGCA_SMOKE")}
    env.update({k: v.replace("{T}", t) for k, v in env_extra.items()})
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([a.replace("{T}", t) for a in command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    print(f"{name}: {lines[0] if lines else ''}")
    assert proc.returncode == 2, (name, proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, (name, proc.stderr[-2000:])
    prefix = "rank 0" if "launcher" in name else "error: "
    assert lines[0].startswith(prefix) and needle.replace("{T}", t) in lines[0], (name, lines[0])
    assert _snapshot(tmp_path) == before, (name, "wrote or changed files")
    assert not os.path.exists(os.path.join(t, "gs:")) and not os.path.exists(os.path.join(t, "out.model"))


def test_warnings_for_values_that_run():
    """warmup_steps > total_steps runs, with a warning (an image size the patch does not divide
    is an error: tests/test_train.py)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("tiny", TINY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert config_check.config_warnings(c) == []
    c.warmup_steps = 10                                   # tiny: 6 steps
    got = config_check.config_warnings(c)
    assert len(got) == 1
    assert got[0].startswith("config.warmup_steps: 10 is more than config.total_steps 6")
