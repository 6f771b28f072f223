"""notebooks/*.ipynb executed first cell to last with nbclient, in smoke mode (issue 13).

Each notebook runs in a temporary folder with the repository on PYTHONPATH and MGCA_SMOKE=1
(downstream in the quickstart's folder, on its export, as on Colab); its files are then checked
against references computed here. reproduce_cc3m runs
on tests/test_readme.py's fixtures: the img2dataset and pip stubs, the planted tar samples and
the small benchmark layouts. A failing cell fails the test with the notebook's name and the
cell's number. Each notebook's time is printed.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).parent))
import test_readme  # noqa: E402  (the README's CC3M fixtures and stubs)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
NAMES = ("quickstart", "downstream", "reproduce_cc3m")
MAX_OUTPUT_BYTES = 20_000          # committed outputs: stripped, or at most this much
MACHINE_PATHS = ("/work", "/tmp", "/home", "/root", "/Users", "C:\\\\")


def execute(path: Path, cwd: Path, timeout=900):
    """Runs every cell of `path` in cwd; a failing cell fails the test, naming notebook and cell."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as e:
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                pytest.fail(f"{path.name}: cell {index} ({first!r}) failed: {e.ename}: {e.evalue}\n"
                            f"{str(e)[-3000:]}", pytrace=False)
    return nb, time.perf_counter() - t0


def cell_text(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def set_kernel_env(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)       # one CPU device, as a user has
    monkeypatch.delenv("VIRTUAL_ENV", raising=False)
    monkeypatch.setenv("MGCA_SMOKE", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


@pytest.fixture
def kernel_env(monkeypatch):
    return set_kernel_env(monkeypatch)


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory):
    """quickstart.ipynb executed once. downstream.ipynb then runs in the same folder, on the
    quickstart's export, as on Colab; that saves it training and exporting a run of its own."""
    folder = tmp_path_factory.mktemp("notebooks")
    with pytest.MonkeyPatch.context() as mp:
        set_kernel_env(mp)
        nb, seconds = execute(NOTEBOOKS / "quickstart.ipynb", folder)
    print(f"\nquickstart.ipynb: {seconds:.1f}s")
    return folder, nb


def miou_float64(pred, gt, num_classes):
    """Mean IoU over classes present in prediction or ground truth, from a float64 confusion matrix."""
    conf = np.bincount(num_classes * gt.ravel().astype(np.int64) + pred.ravel(),
                       minlength=num_classes ** 2).reshape(num_classes, num_classes).astype(np.float64)
    inter, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    return float((inter[union > 0] / union[union > 0]).mean())


# ----------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("name", NAMES)
def test_notebook_metadata(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    raw = path.read_text()
    nb = nbformat.reads(raw, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec["name"] == "python3", nb.metadata.kernelspec   # Colab's kernel
    assert nb.metadata.kernelspec["language"] == "python"
    for p in MACHINE_PATHS:
        assert p not in raw, f"{path.name}: machine path {p!r}"
    outputs = sum(len(json.dumps(c.get("outputs", []))) for c in nb.cells if c.cell_type == "code")
    assert outputs <= MAX_OUTPUT_BYTES, f"{path.name}: {outputs} bytes of outputs"
    assert "colab.research.google.com/github/" in (REPO / "README.md").read_text().split(
        f"notebooks/{name}.ipynb")[0].rsplit("\n", 1)[-1], f"README: no Colab badge for {name}"


def run_setup_cell_on_fake_colab(version, cwd):
    """Runs the notebooks' setup cell with google.colab faked and sys.version_info set to `version`."""
    setup = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4).cells[1].source
    fake = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
            f"sys.version_info = {(*version, 0, 'final', 0)!r}\n")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}     # a clone attempt fails, never prompts
    return subprocess.run([sys.executable, "-c", fake + setup], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("version", [(3, 10), (3, 14)])
def test_install_cell_refuses_unsupported_python(tmp_path, version):
    """On Colab with Python 3.10 or 3.14, the setup cell stops, naming the supported versions."""
    proc = run_setup_cell_on_fake_colab(version, tmp_path)
    assert not (tmp_path / "mgca_jax").exists()           # stopped before cloning
    assert proc.returncode == 1
    assert (f"RuntimeError: mgca_jax supports Python 3.11 to 3.13; this runtime runs Python "
            f"{version[0]}.{version[1]}." in proc.stderr), proc.stderr[-2000:]
    setup = nbformat.read(NOTEBOOKS / "quickstart.ipynb", as_version=4).cells[1].source
    for name in NAMES[1:]:       # every notebook has the same setup cell
        assert nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells[1].source == setup


def test_install_cell_refuses_placeholder_owner(tmp_path):
    """On Colab with a supported Python, the unreplaced OWNER placeholder stops the cell before
    any `git clone` (README, "Notebooks", documents the placeholder)."""
    proc = run_setup_cell_on_fake_colab((3, 12), tmp_path)
    assert not (tmp_path / "mgca_jax").exists()
    assert proc.returncode == 1
    assert "RuntimeError: REPO_URL still holds the placeholder OWNER" in proc.stderr, proc.stderr[-2000:]
    assert "OWNER" in (REPO / "README.md").read_text().split("## Notebooks", 1)[1].split("\n\n")[1]


def test_failing_cell_names_notebook_and_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError('planted')")])
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "planted.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(pytest.fail.Exception) as info:
        execute(path, tmp_path, timeout=120)
    first_line = str(info.value).splitlines()[0]
    assert first_line == ("planted.ipynb: cell 1 (\"raise ValueError('planted')\") failed: "
                          "ValueError: planted"), first_line


# ----------------------------------------------------------------------------- execution

def test_quickstart(quickstart_folder):
    tmp_path, nb = quickstart_folder
    for f in ("loss_curves.png", "iou_bars.png", "units.png", "my_image.png",
              "my_segmentation/my_image_overlay.png", "export_segmentation.png",
              "exports/quickstart/SHA256SUMS"):
        assert (tmp_path / f).is_file(), f
    run = json.loads((tmp_path / "exports" / "quickstart" / "config.json").read_text())
    steps = run["provenance"]["step"]
    assert (tmp_path / f"workdirs/quickstart/segmentation_step{steps}.png").is_file(), steps
    record = json.loads((tmp_path / "units_embedded.json").read_text())["results"]["embedded"]
    assert set(record["units"]) == {"pixel", "group", "adaptive"}
    assert record["num_images"] == 16
    # The all-background predictor on the same 16 images, from the masks the notebook generated.
    import tensorflow_datasets as tfds
    from mgca_jax.data import scenes_builder
    trained = json.loads((tmp_path / "workdirs/quickstart/config.json").read_text())
    assert trained["data"]["config_name"] == "default" and trained["total_steps"] == 200
    builder = scenes_builder.build(str(tmp_path / "data"), trained["data"]["config_name"])
    masks = np.stack([ex["mask"] for ex in tfds.as_numpy(builder.as_dataset(split="validation").take(16))])
    masks = masks.reshape(masks.shape[:3]).astype(np.int64)
    trivial = miou_float64(np.zeros_like(masks), masks, len(record["label_names"]))
    best = max(u["miou"] for u in record["units"].values())
    print(f"quickstart: mIoU per unit " + ", ".join(f"{k} {100 * v['miou']:.2f}" for k, v in record["units"].items())
          + f"; all-background {100 * trivial:.2f}")
    assert all(0 <= u["miou"] <= 1 for u in record["units"].values())
    # The smoke setting is 200 steps of the demo at 64 px (the tiny world's runs did not beat
    # all background reliably: docs/results.md, issue 13). Every unit must beat the trivial
    # predictor by 3 points on these 16 images (session 8: 17.68-18.04 % against 11.06 %).
    assert min(u["miou"] for u in record["units"].values()) > trivial + 0.03, (record["units"], trivial)
    text = cell_text(nb)
    assert "export segmentation: (192, 192)" in text, text[-2000:]
    assert "loss" in text.split("tags:", 1)[1]


def test_downstream(quickstart_folder, kernel_env):
    tmp_path = quickstart_folder[0]
    nb, seconds = execute(NOTEBOOKS / "downstream.ipynb", tmp_path)
    print(f"\ndownstream.ipynb: {seconds:.1f}s (on the quickstart's export)")
    for f in ("zero_shot.png", "probe.png"):
        assert (tmp_path / f).is_file(), f
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["export"] == "exports/quickstart", result["export"]
    assert not (tmp_path / "exports" / "tiny").exists()          # no run of its own
    from mgca_jax import api
    from mgca_jax.data import scenes
    size = api.read_config(str(tmp_path / "exports" / "quickstart"))["preprocessing"]["image_size"]
    gt = np.stack([scenes.make_example(seed=result["test_seed"], index=i, image_size=size)["mask"]
                   for i in range(result["n_test"])]).astype(np.int64)
    pred = np.load(tmp_path / "probe_predictions.npz")["pred"].astype(np.int64)
    assert pred.shape == gt.shape
    c = len(scenes.CLASS_NAMES) + 1
    probe, trivial = miou_float64(pred, gt, c), miou_float64(np.zeros_like(gt), gt, c)
    assert result["probe_miou"] == pytest.approx(probe, abs=1e-6)
    assert result["all_background_miou"] == pytest.approx(trivial, abs=1e-6)
    print(f"downstream: probe mIoU {100 * probe:.2f} %, all-background {100 * trivial:.2f} %, "
          f"loss {result['train_loss_first']:.3f} -> {result['train_loss_last']:.3f}")
    assert probe > trivial
    assert result["train_loss_last"] < result["train_loss_first"]
    assert "export" in result and "a " in cell_text(nb)


def test_reproduce_cc3m(tmp_path, kernel_env):
    shared, stubs, log = tmp_path / "shared", tmp_path / "stubs", tmp_path / "stub_calls.jsonl"
    shared.mkdir()
    stubs.mkdir()
    for tool, extra in (("pip", ""), ("img2dataset", test_readme.IMG2DATASET)):
        (stubs / tool).write_text(test_readme.STUB_RECORD.format(python=sys.executable) + extra)
        (stubs / tool).chmod(0o755)
    import csv
    with open(tmp_path / "Train_GCC-training.tsv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter="\t", lineterminator="\n").writerows(test_readme.fixture_rows())
    scored = test_readme.write_benchmarks(shared / "benchmarks")
    kernel_env.setenv("SHARED", str(shared))
    kernel_env.setenv("README_STUB_LOG", str(log))
    kernel_env.setenv("PATH", f"{stubs}{os.pathsep}{os.environ['PATH']}")

    nb, seconds = execute(NOTEBOOKS / "reproduce_cc3m.ipynb", tmp_path)
    print(f"\nreproduce_cc3m.ipynb: {seconds:.1f}s")
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["pip", "img2dataset"]
    for call in calls:
        test_readme.check_stub_call(call, REPO)
    report = json.loads((shared / "tfds" / "cc3m" / "default" / "1.0.0" / "build_report.json").read_text())
    train = report["splits"]["train"]
    planted = {r for r in test_readme.PLANTED.values() if r}
    dropped = {r for r in planted if not r.startswith("converted")}
    assert train["dropped_by_reason"] == {r: 1 for r in dropped}, train
    assert train["kept"] == 29 + 3
    text = cell_text(nb)
    assert f"train: seen {train['seen']}, kept 32" in text
    assert (shared / "spm_cc3m_16k.model").is_file()
    assert (shared / "runs" / "cc3m" / "checkpoints" / "3").is_dir()
    result = json.loads(next((shared / "runs" / "cc3m").glob("inference_all_step3.json")).read_text())
    assert set(result["results"]) == scored
    assert "1 cpu device(s): global batch 16 -> 16 per chip" in text
