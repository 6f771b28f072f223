"""benchmarks/shape_probe.py: its targets and IoU against hand-computed cases, and a 2-step run."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
spec = importlib.util.spec_from_file_location("shape_probe", os.path.join(ROOT, "benchmarks", "shape_probe.py"))
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def _load_plot():
    spec = importlib.util.spec_from_file_location(
        "plot_probe_curves", os.path.join(ROOT, "benchmarks", "plot_probe_curves.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_patch_targets_are_class_fractions():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 3          # top-left patch all class 3
    masks[0, 0, 2] = 5            # one pixel of class 5 in the top-right patch
    t = probe.patch_targets(masks, 2)                     # [1, 4, 9], patches in row order
    assert t.shape == (1, 4, 9)
    assert t[0, 0, 3] == 1.0 and t[0, 0].sum() == 1.0
    assert t[0, 1, 5] == 0.25 and t[0, 1, 0] == 0.75
    assert t[0, 2, 0] == 1.0 and t[0, 3, 0] == 1.0


def test_miou_hand_case():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1                                  # 4 pixels of class 1, 12 background
    labels = np.array([[1, 1, 0, 0]])                     # top row of 2x2 patches says class 1
    iou = probe.miou(labels, masks)
    assert iou[1] == 50.0                                 # 4 / (8 predicted)
    assert iou[0] == 100 * 8 / 12                         # background: 8 right of 12
    assert np.all(iou[2:] == 0)


def test_presence_labels_threshold_at_one_half():
    logits = np.array([[[-1.0, 2.0, 0.0, 0, 0, 0, 0, 0], [-3.0] * 8]])
    assert probe.patch_labels(logits, "presence").tolist() == [[2, 0]]
    assert probe.patch_labels(np.array([[[0.1, 3.0, 0.2]]]), "dense").tolist() == [[1]]


def test_ceiling_is_the_patch_majority_hand_case():
    """One 4x4 image, patch 2: an object of 3 pixels in patch (0, 0), 1 pixel in patch (1, 1).
    The majority labels give class 1 to patch (0, 0) only: class 1 IoU 3 / (4 + 4 - 3),
    background 11 / (12 + 12 - 11)."""
    mask = np.zeros((1, 4, 4), np.uint8)
    mask[0, 0, 0] = mask[0, 0, 1] = mask[0, 1, 0] = mask[0, 3, 3] = 1
    iou = probe.miou(probe.patch_targets(mask, 2).argmax(-1), mask)
    np.testing.assert_allclose(iou[:2], [100 * 11 / 13, 100 * 3 / 5])


def test_two_steps_print_the_curve(capsys, tmp_path):
    probe.main(["--steps=2", "--train_scenes=32", "--eval_scenes=12", "--size=32", "--every=1",
                "--batch=8"])
    out = capsys.readouterr().out
    log = tmp_path / "probe.log"
    log.write_text(out)
    plot = _load_plot()
    assert plot.read_curve(str(log))[:2] == ([1, 2], [float(r.split("atypical mIoU ")[1].split()[0])
                                                     for r in out.splitlines() if r.startswith("step ")])
    png = tmp_path / "curves.png"
    plot.main(["--out", str(png), f"a run={log}"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "other.log").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="other.log: no 'step"):
        plot.main(["--out", str(png), f"x={tmp_path / 'other.log'}"])
    assert "atypical: all-background mIoU" in out and "standard: all-background mIoU" in out
    rows = [line for line in out.splitlines() if line.startswith("step ")]
    assert [r.split()[1] for r in rows] == ["1/2", "2/2"]
    assert all("atypical mIoU" in r and "standard mIoU" in r and "steps/s" in r for r in rows)


def test_plot_reads_a_trainer_workdir(tmp_path):
    """The curve of a trainer workdir: its eval_step*.json in step order, as percent."""
    import json
    for step, miou in ((1000, 0.125), (500, 0.0991), (1500, 0.2)):
        (tmp_path / f"eval_step{step}.json").write_text(json.dumps(
            {"step": step, "splits": {"tune": {"miou": 0.5}, "tune_atypical": {"miou": miou}}}))
    plot = _load_plot()
    steps, scores, _ = plot.read_curve(str(tmp_path))
    assert steps == [500, 1000, 1500]
    np.testing.assert_allclose(scores, [9.91, 12.5, 20.0])
    assert plot.read_curve(str(tmp_path), "tune")[1] == [50.0] * 3
    with pytest.raises(ValueError, match="no split 'validation'"):
        plot.read_curve(str(tmp_path), "validation")
    png = tmp_path / "curve.png"
    plot.main(["--out", str(png), "--title", "t", f"run={tmp_path}"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no eval_step"):
        plot.main(["--out", str(png), f"x={tmp_path / 'empty'}"])


def test_cosine_head_is_the_presence_terms_logits():
    """--head=cosine: (cos(projected patch, class vector) - 0.3) / 0.1, re-derived in float64."""
    import jax
    model = probe.Probe("mu/8", "patch", "1", 8, "cosine")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    params = model.init(jax.random.PRNGKey(0), images)
    got = np.asarray(model.apply(params, images))
    patches = np.asarray(model.apply(params, images, capture_intermediates=lambda m, _: m.name == "proj",
                                     mutable=["intermediates"])[1]["intermediates"]["proj"]["__call__"][0],
                         np.float64)
    classes = np.asarray(params["params"]["classes"], np.float64)
    unit = lambda v: v / np.sqrt((v * v).sum(-1, keepdims=True) + 1e-6)
    want = (unit(patches) @ unit(classes).T - 0.3) / 0.1
    assert got.shape == (2, 16, 8) and np.ptp(want) > 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
