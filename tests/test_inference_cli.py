"""`python -m mgca_jax.evaluate` and `python -m mgca_jax.segment` on a saved random checkpoint."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import tiny  # noqa: E402

from mgca_jax.data import scenes  # noqa: E402
from mgca_jax.data.tokenizer import Tokenizer, train_tokenizer  # noqa: E402
from mgca_jax.evaluation import benchmarks  # noqa: E402
from mgca_jax.models.two_tower import make_model, random_params  # noqa: E402

# Fast protocol for a model trained at 32 px: 64 px images -> 72 px, 48 px windows
# (position embedding resized 4x4 -> 6x6), stride 16: 3x3 windows per image.
FAST = ["--short_side=72", "--crop=48", "--stride=16", "--windows_per_device=2"]


def random_run(root, step=0, seed=0):
    """A run directory laid out as train.py writes it: config.json + checkpoints/STEP (random
    params of configs/tiny.py, a 64-piece tokenizer trained on scene captions)."""
    spm = str(root / "spm.model")
    train_tokenizer([scenes.make_example(0, i, 32)["caption"] for i in range(200)], spm, 64)
    config = tiny.get_config()
    config.data_dir = str(root)
    config.input.tokenizer = spm
    config.model.vocab_size = Tokenizer(spm).vocab_size
    params = random_params(make_model(config), config.input.image_size, config.input.max_len, seed=seed)
    state = {"step": jnp.asarray(step, jnp.int32), "params": params,
             "opt_state": optax.adamw(1e-3).init(params)}
    wd = root / "wd"
    with ocp.CheckpointManager(str(wd / "checkpoints"),
                               options=ocp.CheckpointManagerOptions(create=True)) as mngr:
        mngr.save(step, args=ocp.args.StandardSave(state))
        mngr.wait_until_finished()
    (wd / "config.json").write_text(json.dumps(config.to_dict()))
    return wd


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return random_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    """Three embedded scenes in the VOC 2012 layout (JPEG images, PNG masks; scene ids
    1..8 stand for VOC ids 1..8, 0 is background, the top row is 255 = ignore)."""
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    names = [f"2008_{i:06d}" for i in range(3)]
    for i, name in enumerate(names):
        ex = scenes.make_example(11, i, 64)
        Image.fromarray(ex["image"]).save(base / "JPEGImages" / f"{name}.jpg", format="JPEG", quality=95)
        mask = ex["mask"][..., 0] if ex["mask"].ndim == 3 else ex["mask"]
        mask = mask.astype(np.uint8)
        mask[0] = 255
        Image.fromarray(mask).save(base / "SegmentationClass" / f"{name}.png", format="PNG")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    assert benchmarks.count("voc21", root) == 3
    return root


def run(module, *args):
    # Two host devices: windows are still sharded with pmap; fewer threads on a small CPU.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_evaluate_voc21_all_units(workdir, voc_dir, tmp_path):
    out = tmp_path / "results.json"
    png = tmp_path / "units.png"
    proc = run("mgca_jax.evaluate", f"--workdir={workdir}", "--dataset=voc21", f"--data_dir={voc_dir}",
               "--unit=all", "--limit=2", f"--out={out}", f"--png={png}", "--png_rows=4", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {png}" in proc.stdout
    with Image.open(png) as im:                          # 5 columns of the 2 images (or fewer rows)
        assert im.format == "PNG" and im.width >= 5 * 2 * 48
    assert "images/s" in proc.stdout and "ETA" in proc.stdout and "2 devices" in proc.stdout
    for unit in ("pixel", "group", "adaptive"):
        assert f"voc21, {unit} unit" in proc.stdout
    assert proc.stdout.count("mIoU:") == 3 and "| aeroplane" in proc.stdout
    res = json.loads(out.read_text())
    assert res["step"] == 0 and res["checkpoint"].endswith(os.path.join("checkpoints", "0"))
    voc = res["results"]["voc21"]
    assert voc["num_images"] == 2 and len(voc["label_names"]) == 21
    assert voc["protocol"] == {"short_side": 72, "max_long": 2048, "crop": 48, "stride": 16}
    for unit in ("pixel", "group", "adaptive"):
        r = voc["units"][unit]
        assert math.isfinite(r["miou"]) and 0.0 <= r["miou"] <= 1.0
        assert set(r["iou"]) == set(benchmarks.get_benchmark("voc21").label_names)
        defined = [v for v in r["iou"].values() if v is not None]
        assert r["miou"] == pytest.approx(np.mean(defined))
    boot = voc["paired_bootstrap"]                       # adaptive minus each other unit
    assert set(boot) == {"adaptive-pixel", "adaptive-group"} and boot["adaptive-pixel"]["samples"] == 1000
    for other in ("pixel", "group"):
        b = boot[f"adaptive-{other}"]
        assert b["diff"] == pytest.approx(voc["units"]["adaptive"]["miou"] - voc["units"][other]["miou"])
        assert b["low"] <= b["high"] and 0.0 <= b["p_above_zero"] <= 1.0
    assert proc.stdout.count("paired image resamples") == 2
    assert "voc21: failure modes" in proc.stdout and "object fragments per image" in proc.stdout
    assert set(voc["failure_modes"]) == {"pixel", "group", "adaptive"}
    assert all(f["images"] == 2 for f in voc["failure_modes"].values())


def test_default_protocol_scales_the_fields_ratios_to_the_training_size():
    from mgca_jax import evaluate
    assert evaluate.default_protocol() == (448, 448, 224)          # benchmarks: the field's protocol
    assert evaluate.default_protocol(224) == (448, 448, 224)
    assert evaluate.default_protocol(64) == (128, 128, 64)         # embedded demo: one 128 px window
    assert evaluate.default_protocol(32) == (64, 64, 32)
    # config.eval.test_scale: short side and window test_scale x the training size, stride half
    assert evaluate.default_protocol(64, 1.0) == (64, 64, 32)
    assert evaluate.default_protocol(64, 1.5) == (96, 96, 48)
    assert evaluate.default_protocol(224, 2) == (448, 448, 224)
    with pytest.raises(ValueError, match="test_scale"):
        evaluate.default_protocol(64, 0.0)
    import demo
    from mgca_jax import inference
    c = demo.get_config()
    assert inference.config_protocol(c) == (128, 128, 64)          # the shipped default: 2
    c.eval.test_scale = 1.0
    assert inference.config_protocol(c) == (64, 64, 32)
    del c.eval["test_scale"]                                       # a config from before the field
    assert inference.config_protocol(c) == (128, 128, 64)


def test_unit_examples_keep_the_largest_gains_and_losses():
    from mgca_jax.evaluate import UnitExamples
    gt = np.array([[0, 1], [1, 255]])                    # 3 valid pixels
    right, wrong = gt.copy(), np.where(gt == 255, 255, 2)
    one_off = np.array([[0, 1], [2, 255]])               # 2 of 3 right
    ex = UnitExamples(("pixel", "group", "adaptive"), rows=3)   # 1 gain row, 2 loss rows
    cases = {"gain 1/3": (one_off, wrong, right), "gain 1": (wrong, wrong, right),
             "gain 1/3 later": (wrong, one_off, right),
             "loss 1": (right, wrong, wrong), "loss 1/3": (wrong, right, one_off), "tie": (right, right, right)}
    for name, preds in cases.items():
        ex.add(name, gt, list(preds))
    rows = ex.rows()
    assert [r[1] for r in rows] == ["gain 1", "loss 1/3", "loss 1"]
    np.testing.assert_allclose([r[0] for r in rows], [1.0, -1 / 3, -1.0])
    ex = UnitExamples(("pixel", "group", "adaptive"), rows=4)   # 2 gain rows: ties keep the earlier
    for name, preds in cases.items():
        ex.add(name, gt, list(preds))
    assert [r[1] for r in ex.rows()][:2] == ["gain 1", "gain 1/3"]
    assert ex.margin(np.full((2, 2), 255), [right] * 3) == 0.0


def _one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for n in needles:
        assert str(n) in lines[0], lines[0]


def test_bad_paths_give_one_line_errors(workdir, tmp_path):
    missing = tmp_path / "nowhere"
    _one_line_error(run("mgca_jax.evaluate", f"--workdir={missing}", "--dataset=voc21",
                        f"--data_dir={tmp_path}"), "--workdir", missing)
    _one_line_error(run("mgca_jax.evaluate", f"--workdir={workdir}", "--dataset=voc21",
                        f"--data_dir={tmp_path}"), tmp_path / "VOCdevkit" / "VOC2012")
    _one_line_error(run("mgca_jax.evaluate", f"--workdir={workdir}", "--dataset=voc21",
                        f"--data_dir={tmp_path}", "--bootstrap=-1"), "--bootstrap", "-1")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    _one_line_error(run("mgca_jax.segment", f"--checkpoint={workdir / 'checkpoints' / '7'}",
                        f"--image={image}", "--classes=a,b", f"--out_dir={tmp_path}"),
                    workdir / "checkpoints" / "7")


def test_segment_writes_overlay_and_labels(workdir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scenes.make_example(2, 0, 64)["image"]).save(images / "scene.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(images / "noise.jpg")
    out = tmp_path / "out"
    proc = run("mgca_jax.segment", f"--checkpoint={workdir / 'checkpoints' / '0'}", f"--image={images}",
               "--classes=circle, square,ring", f"--out_dir={out}", "--bg_thresh=0.0", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "label_names.json").read_text()) == {
        "0": "background", "1": "circle", "2": "square", "3": "ring"}
    for name, (h, w) in (("scene", (64, 64)), ("noise", (40, 56))):
        with Image.open(out / f"{name}_labels.png") as im:
            assert im.mode == "L" and im.size == (w, h)
            assert np.asarray(im).max() <= 3
        with Image.open(out / f"{name}_overlay.png") as im:
            assert im.mode == "RGB" and im.width >= w and im.height > h    # legend below


def test_segment_skips_unreadable_images_and_names_them(workdir, tmp_path, capsys):
    from mgca_jax import segment
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(scenes.make_example(2, 0, 64)["image"]).save(images / "scene.png")
    (images / "broken.png").write_bytes(b"not a png")                       # fails to open
    Image.fromarray(scenes.make_example(2, 1, 64)["image"]).save(images / "cut.jpg", quality=95)
    (images / "cut.jpg").write_bytes((images / "cut.jpg").read_bytes()[:-1000])   # opens, fails to decode
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        segment.main([f"--checkpoint={workdir / 'checkpoints' / '0'}", f"--image={images}",
                      "--classes=circle,square", f"--out_dir={out}", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1, err
    assert err[-1].startswith("error: wrote 1 of 3 images; skipped 2 unreadable: "), err
    assert str(images / "broken.png") in err[-1] and str(images / "cut.jpg") in err[-1], err
    assert sorted(os.listdir(out)) == ["label_names.json", "scene_labels.png", "scene_overlay.png"]


def test_load_from_a_relative_workdir(workdir, monkeypatch):
    """orbax wants absolute paths; `--workdir=workdirs/demo` must work from the repo root."""
    from mgca_jax import checkpoints
    monkeypatch.chdir(os.path.dirname(str(workdir)))
    loaded = checkpoints.load(workdir=os.path.basename(str(workdir)))
    assert loaded.step == 0 and jax.tree.leaves(loaded.params)


EVALUATE = ["--workdir={wd}", "--dataset=voc21", "--data_dir={voc}", "--out={tmp}/out.json"]
SEGMENT = ["--checkpoint={wd}/checkpoints/0", "--image={tmp}/img.png", "--classes=a,b",
           "--out_dir={tmp}/out"]
# (module, arguments, flags of the base command to drop, text the one line must hold)
BAD_FLAGS = [
    ("evaluate", [], ["--dataset=voc21"], "--dataset"),
    ("evaluate", ["--unit=region"], [], "--unit"),
    ("evaluate", ["--limit=abc"], [], "--limit"),
    ("evaluate", ["--limit=0"], [], "--limit"),
    ("evaluate", ["--png={tmp}/u.png"], [], "--png"),
    ("evaluate", ["--unit=all", "--png_rows=0"], [], "--png_rows"),
    ("evaluate", ["--bootstrap=-1"], [], "--bootstrap"),
    ("evaluate", ["--num_groups=0"], [], "--num_groups"),
    ("evaluate", ["--agreement_thresh=1.5"], [], "--agreement_thresh"),
    ("evaluate", ["--coherence_thresh=nan"], [], "--coherence_thresh"),
    ("evaluate", ["--outlier_thresh=-2"], [], "--outlier_thresh"),
    ("evaluate", ["--bg_thresh=abc"], [], "--bg_thresh"),
    ("evaluate", ["--short_side=0"], [], "--short_side"),
    ("evaluate", ["--max_long=-1"], [], "--max_long"),
    ("evaluate", ["--crop=0"], [], "--crop"),
    ("evaluate", ["--stride=0"], [], "--stride"),
    ("evaluate", ["--windows_per_device=0"], [], "--windows_per_device"),
    ("evaluate", ["--windows_per_device=abc"], [], "--windows_per_device"),
    ("evaluate", ["--crop=32", "--stride=48"], [], "--stride: 48 is larger than the window"),
    ("evaluate", ["--templates=bogus"], [], "--templates"),
    ("evaluate", ["--dataset=voc"], ["--dataset=voc21"], "--dataset: unknown data set 'voc'"),
    ("evaluate", [], ["--data_dir={voc}"], "--data_dir"),
    ("evaluate", ["--dataset=all", "--data_dir={tmp}"], ["--dataset=voc21", "--data_dir={voc}"],
     "--data_dir: no benchmark found"),
    ("evaluate", ["--dataset=embedded", "--data_dir={tmp}/none"], ["--dataset=voc21", "--data_dir={voc}"],
     "--data_dir: directory"),
    ("evaluate", [], ["--workdir={wd}"], "--workdir"),
    ("evaluate", ["--checkpoint={wd}/checkpoints/0"], [], "--workdir"),
    ("evaluate", ["--workdir={tmp}"], ["--workdir={wd}"], "--workdir: expected a complete checkpoint"),
    ("evaluate", ["--checkpoint={wd}"], ["--workdir={wd}"], "--checkpoint"),
    ("evaluate", ["--tokenizer={tmp}/none.model"], [], "none.model"),
    ("segment", [], ["--classes=a,b"], "--classes"),
    ("segment", ["--classes="], ["--classes=a,b"], "--classes: no class names"),
    ("segment", ["--classes= , "], ["--classes=a,b"], "--classes: no class names"),
    ("segment", ["--classes=a,b,a"], ["--classes=a,b"], "--classes: duplicate"),
    ("segment", ["--alpha=2"], [], "--alpha"),
    ("segment", ["--alpha=abc"], [], "--alpha"),
    ("segment", ["--image={tmp}/none.png"], ["--image={tmp}/img.png"], "--image"),
    ("segment", ["--image={tmp}/empty"], ["--image={tmp}/img.png"], "--image: no image files"),
    ("segment", ["--image={tmp}/broken.png"], ["--image={tmp}/img.png"], "--image: cannot read"),
    ("segment", ["--unit=all"], [], "--unit"),
    ("segment", ["--bg_thresh=abc"], [], "--bg_thresh"),
    ("segment", ["--templates=bogus"], [], "--templates"),
    ("segment", ["--num_groups=0"], [], "--num_groups"),
    ("segment", ["--crop=32", "--stride=48"], [], "--stride"),
    ("segment", ["--tokenizer={tmp}/none.model"], [], "none.model"),
]


@pytest.fixture(scope="module")
def bad_input_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp / "img.png")
    (tmp / "broken.png").write_bytes(b"not a png")
    (tmp / "empty").mkdir()
    return tmp


@pytest.mark.parametrize("module,extra,drop,needle", BAD_FLAGS,
                         ids=[f"{m}:{' '.join(e + ['-' + d for d in dr])}" for m, e, dr, _ in BAD_FLAGS])
def test_every_bad_flag_is_one_line_exit_2(module, extra, drop, needle, workdir, voc_dir,
                                           bad_input_dir, capsys):
    import importlib
    fill = dict(wd=workdir, voc=voc_dir, tmp=bad_input_dir)
    base = EVALUATE if module == "evaluate" else SEGMENT
    argv = [a.format(**fill) for a in base if a not in drop] + [a.format(**fill) for a in extra]
    main = importlib.import_module(f"mgca_jax.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle.format(**fill) in lines[0], lines[0]
    assert not (bad_input_dir / "out.json").exists() and not (bad_input_dir / "out").exists()
