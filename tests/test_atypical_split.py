"""The atypical-colour split, the tune splits and the no-colour-cue world (issue 17):
generator properties re-derived by hand, the builder's splits, `evaluate
--dataset=embedded_atypical` end to end and the trainer scoring both validation splits."""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from mgca_jax.data import scenes
from mgca_jax.data import scenes_builder as sb

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ATYPICAL_SEED = sb.split_seed(0, "validation_atypical")

# sha256(image + mask + caption)[:16] of scenes drawn by the generator BEFORE the colour
# policy became an argument (commit 08b2cdc): the existing splits must stay byte-identical.
PRE_CHANGE = {
    (32, "train", 0): "5ddccf80529cf63c", (32, "train", 33): "c3c1abcb1956eedc",
    (32, "validation", 1): "533c94fb7d4894d2", (32, "validation", 7): "af295ffd13be7d85",
    (64, "train", 2): "743b06413f220aa5", (64, "train", 7): "859018ee82fe276f",
    (64, "validation", 0): "dea1b36b4e650c62", (64, "validation", 33): "72b4faf9b97ba147",
}
PRE_CHANGE_TUNE = {0: "9e81b127cac76059", 5: "1723e7696101783f"}   # make_example(424242, i, 64)


def _digest(ex):
    return hashlib.sha256(ex["image"].tobytes() + ex["mask"].tobytes()
                          + ex["caption"].encode()).hexdigest()[:16]


def test_existing_splits_are_byte_identical_to_the_pre_change_generator():
    for (size, split, i), want in PRE_CHANGE.items():
        seed = sb.split_seed(0, split)
        assert _digest(scenes.make_example(seed, i, size)) == want, (size, split, i)
        assert _digest(scenes.make_example(seed, i, size, "standard")) == want
    # The builder's tune split at seed 0 is the tune set of earlier sessions (seed 424242).
    assert sb.split_seed(0, "tune") == 424242
    for i, want in PRE_CHANGE_TUNE.items():
        assert _digest(scenes.make_example(424242, i, 64)) == want


def test_split_seeds_never_collide():
    seen = {}
    for seed in range(-300, 300):
        for split in sb._SPLIT_SEED_OFFSET:
            s = sb.split_seed(seed, split)
            assert s not in seen, (seed, split, seen.get(s))
            seen[s] = (seed, split)


def _bare_background(seed, index, size):
    """The scene's background before any object: the stream's first draws."""
    rng = np.random.default_rng([seed, index])
    kind = scenes.BACKGROUNDS[int(rng.integers(len(scenes.BACKGROUNDS)))]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return kind, scenes._background(rng, kind, size, yy, xx).astype(np.float64)


def _contrasts(region, rgb):
    """The generator's contrast rule, re-derived in float64: of every other pixel of the
    object's box, at most 8 % within 80 of the colour and 110 away on average."""
    px = region[::2, ::2].reshape(-1, 3)
    d = np.sqrt(((px - np.asarray(rgb, np.float64)) ** 2).sum(-1))
    return (d < 80.0).mean() <= 0.08 and d.mean() >= 110.0


def _box(cx, cy, diameter, size):
    r = diameter / 2
    return (max(math.floor(cy - r) - 1, 0), min(math.ceil(cy + r) + 1, size),
            max(math.floor(cx - r) - 1, 0), min(math.ceil(cx + r) + 1, size))


@pytest.mark.parametrize("size,count", [(32, 60), (64, 40)])
def test_atypical_colours_are_never_typical_and_contrast_with_the_background(size, count):
    objects = 0
    for i in range(count):
        ex = scenes.make_example(ATYPICAL_SEED, i, size, "atypical")
        kind, bg = _bare_background(ATYPICAL_SEED, i, size)
        assert ex["background"] == kind
        for name, colour, (cx, cy), diam in zip(ex["objects"], ex["colours"], ex["centres"],
                                                ex["diameters"]):
            assert colour != scenes.TYPICAL_COLOUR[name], (i, name)
            y0, y1, x0, x1 = _box(cx, cy, diam, size)
            assert _contrasts(bg[y0:y1, x0:x1], scenes.COLOURS[colour]), (i, name, colour)
            objects += 1
        # The top-most object is painted in its stated colour (jitter <= 12, noise sd 3).
        if size == 64 and ex["objects"].count(ex["objects"][-1]) == 1:
            y0, y1, x0, x1 = _box(*ex["centres"][-1], ex["diameters"][-1], size)
            inside = ex["mask"][y0:y1, x0:x1] == scenes.CLASS_IDS[ex["objects"][-1]]
            median = np.median(ex["image"][y0:y1, x0:x1][inside].astype(np.float64), axis=0)
            assert np.abs(median - scenes.COLOURS[ex["colours"][-1]]).max() <= 18, (i, median)
    assert objects > count


def test_atypical_scene_keeps_the_standard_scenes_layout_and_background():
    size = 32
    dilate = lambda m: np.pad(m, 2)[np.add.outer(np.arange(size), np.arange(5))[:, None, :, None],  # noqa: E731
                                    np.add.outer(np.arange(size), np.arange(5))[None, :, None, :]
                                    ].any(axis=(2, 3))
    recoloured = 0
    for i in range(40):
        std = scenes.make_example(ATYPICAL_SEED, i, size)
        aty = scenes.make_example(ATYPICAL_SEED, i, size, "atypical")
        np.testing.assert_array_equal(std["mask"], aty["mask"])
        for key in ("objects", "diameters", "centres", "background"):
            assert std[key] == aty[key], (i, key)
        # Pixels more than 2 px from every object are the same bare background.
        far = ~dilate(std["mask"] > 0)
        np.testing.assert_array_equal(std["image"][far], aty["image"][far])
        recoloured += sum(a != s for a, s in zip(aty["colours"], std["colours"]))
        assert scenes.caption_class_words(aty["caption"]) <= set(aty["objects"])
    assert recoloured > 0


def test_no_colour_cue_policy_removes_the_typical_colour_bias():
    def typical_share(colours):
        hits = total = 0
        for i in range(150):
            ex = scenes.make_example(7, i, 32, colours)
            hits += sum(c == scenes.TYPICAL_COLOUR[n] for n, c in zip(ex["objects"], ex["colours"]))
            total += len(ex["objects"])
        return hits / total
    standard, no_cue = typical_share("standard"), typical_share("no_colour_cue")
    # Standard: typical with p = 0.7 when it contrasts, else 1 of the ~6-9 contrasting colours.
    assert standard > 0.6 and no_cue < 0.25, (standard, no_cue)
    assert typical_share(scenes.ColourPolicy(typical_prob=0.0)) == no_cue
    with pytest.raises(ValueError, match="unknown colour policy 'sepia'"):
        scenes.make_example(0, 0, 32, "sepia")


def test_atypical_stream_skips_scenes_without_an_atypical_colouring(monkeypatch):
    real = scenes.make_example

    def make_example(seed, index, size, colours="standard"):
        if colours == "atypical" and index in (1, 2):
            raise scenes.NoAtypicalColouring("planted")
        return real(seed, index, size, colours)

    monkeypatch.setattr(scenes, "make_example", make_example)
    got = [item[0] for item in sb._iter_encoded(5, 4, 16, "atypical")]
    assert got == [0, 3, 4, 5]
    assert [item[0] for item in sb._iter_encoded(5, 3, 16)] == [0, 1, 2]


def _read(builder, split):
    import tensorflow_datasets as tfds
    return {int(e["id"]): (e["image"], e["mask"][..., 0], e["caption"].decode())
            for e in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))}


def test_builder_splits_and_no_colour_cue_config(tmp_path):
    std = sb.build(str(tmp_path), "tiny", num_train=6, num_validation=5)
    assert str(std.version) == "1.2.0"
    assert set(std.info.splits) == {"train", "validation", "validation_atypical", "tune",
                                    "tune_atypical"}
    for split, colours in sb.EVAL_SPLIT_COLOURS.items():
        stored = _read(std, split)
        assert sorted(stored) == list(range(5)), split
        for i, (image, mask, caption) in stored.items():
            ref = scenes.make_example(sb.split_seed(0, split), i, 32, colours)
            np.testing.assert_array_equal(image, ref["image"])
            np.testing.assert_array_equal(mask, ref["mask"])
            assert caption == ref["caption"]
    no_cue = sb.build(str(tmp_path), "tiny", num_train=6, num_validation=5,
                      train_colours="no_colour_cue")
    assert no_cue.builder_config.name.endswith("no_colour_cue")
    for i, (image, _, _) in _read(no_cue, "train").items():
        ref = scenes.make_example(sb.split_seed(0, "train"), i, 32, "no_colour_cue")
        np.testing.assert_array_equal(image, ref["image"])
    # Only the train split depends on train_colours.
    a, b = _read(std, "validation_atypical"), _read(no_cue, "validation_atypical")
    assert all(np.array_equal(a[i][0], b[i][0]) for i in a)
    assert sb.MgcaScenes.builder_configs["no_colour_cue"].train_colours == "no_colour_cue"
    with pytest.raises(ValueError, match="sepia"):
        sb.build(str(tmp_path), "tiny", num_train=6, train_colours="sepia")


def _run(*args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """configs/tiny.py trained by the main command (6 steps)."""
    root = tmp_path_factory.mktemp("tiny")
    data, wd = root / "data", root / "wd"
    data.mkdir()
    proc = _run("-m", "mgca_jax.main", "--config=configs/tiny.py", f"--workdir={wd}",
                f"--config.data_dir={data}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return wd, data, proc.stdout


def test_trainer_scores_both_validation_splits(trained):
    wd, _, stdout = trained
    assert "zero-shot segmentation, validation split, step 6" in stdout
    assert "zero-shot segmentation, validation_atypical split, step 6" in stdout
    assert stdout.count("mIoU") >= 2
    res = json.loads((wd / "eval_step6.json").read_text())
    assert set(res["splits"]) == {"validation", "validation_atypical"}
    assert res["miou"] == res["splits"]["validation"]["miou"]
    assert res["iou"] == res["splits"]["validation"]["iou"]
    for split in res["splits"].values():
        assert 0.0 <= split["miou"] <= 1.0 and "circle" in split["iou"]
    assert (wd / "segmentation_validation_atypical_step6.png").stat().st_size > 1000
    # The atypical figure is that of the atypical scenes: a float64 re-count of the final
    # checkpoint's labels on the 64 scenes drawn straight from the generator, through the
    # shared predict function (adaptive unit, the default protocol of a 32 px model).
    from mgca_jax import checkpoints, inference
    from mgca_jax.evaluation import protocol
    loaded = checkpoints.load(str(wd), None)
    assert loaded.step == 6
    assert res["unit"] == "adaptive" and res["protocol"]["short_side"] == 64
    tok = checkpoints.load_tokenizer(loaded.config)
    seg = inference.make_segmenter(loaded.model, loaded.params, tok, scenes.CLASS_NAMES,
                                   protocol.get_templates(loaded.config.eval.templates),
                                   loaded.config.input.max_len,
                                   protocol_config=inference.ProtocolConfig(64, 2048, 64, 32),
                                   bg_thresh=loaded.config.eval.bg_thresh)
    exs = [scenes.make_example(ATYPICAL_SEED, i, 32, "atypical") for i in range(64)]
    preds = seg.predict_fn()([e["image"] for e in exs])
    assert res["splits"]["validation_atypical"]["miou"] == pytest.approx(
        _miou(preds, [e["mask"] for e in exs]), abs=1e-6)


def test_trainer_figure_equals_evaluate_workdir_and_export(trained, tmp_path):
    """One inference path: the trainer's reported validation mIoU is, to the last bit,
    `evaluate --workdir` with the adaptive unit at the default protocol, and the same
    through `evaluate --export` (benchmarks/export_parity.py runs both, and checks
    bit-identical encodings and equal labels)."""
    wd, data, _ = trained
    trainer = json.loads((wd / "eval_step6.json").read_text())["miou"]
    out = tmp_path / "parity.json"
    proc = _run("benchmarks/export_parity.py", f"--workdir={wd}", f"--export={tmp_path / 'export'}",
                f"--data_dir={data}", "--images=3", f"--out={out}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["miou_protocol"]["short_side"] == 64 and fig["miou_images"] > 0
    assert fig["miou_workdir"] == fig["miou_export"] == trainer
    assert fig["encode_image_max_abs_diff"] == fig["encode_text_max_abs_diff"] == 0.0
    assert fig["segment_labels_equal_fraction"] == 1.0 and fig["parity"] is True


def _miou(preds, gts):
    """Mean IoU in float64 over the labels present or predicted."""
    n = scenes.NUM_CLASSES
    conf = np.zeros((n, n), np.float64)
    for p, g in zip(preds, gts):
        np.add.at(conf, (np.asarray(g).ravel().astype(int), np.asarray(p).ravel().astype(int)), 1)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    scored = union > 0
    return (np.diag(conf)[scored] / union[scored]).mean()


def _pixel_unit_miou_on_atypical_scenes(workdir, **protocol_config):
    """The float64 mIoU of the run's pixel unit (its bg_thresh and templates) over the 64
    atypical scenes drawn straight from the generator, with a Segmenter built by hand."""
    from mgca_jax import checkpoints, inference
    from mgca_jax.evaluation import protocol, zeroshot
    loaded = checkpoints.load(str(workdir), None)
    tok = checkpoints.load_tokenizer(loaded.config)
    emb = zeroshot.class_embeddings(loaded.model, loaded.params, tok, scenes.CLASS_NAMES,
                                    protocol.get_templates(loaded.config.eval.templates),
                                    loaded.config.input.max_len)
    seg = inference.Segmenter(loaded.model, loaded.params, emb, units=("pixel",),
                              protocol_config=inference.ProtocolConfig(**protocol_config),
                              bg_thresh=loaded.config.eval.bg_thresh, windows_per_device=2)
    exs = [scenes.make_example(ATYPICAL_SEED, i, 32, "atypical") for i in range(64)]
    preds = [p[0] for p in seg.segment([e["image"] for e in exs])]
    return _miou(preds, [e["mask"] for e in exs])


def test_evaluate_scores_the_atypical_split(trained, tmp_path):
    """The pixel unit's mIoU from `evaluate --dataset=embedded_atypical` equals a float64
    re-count over the atypical scenes drawn straight from the generator."""
    wd, data, _ = trained
    out = tmp_path / "aty.json"
    fast = ["--short_side=48", "--crop=48", "--stride=16", "--windows_per_device=2"]
    proc = _run("-m", "mgca_jax.evaluate", f"--workdir={wd}", "--dataset=embedded_atypical",
                f"--data_dir={data}", "--unit=pixel", f"--out={out}", *fast)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())["results"]["embedded_atypical"]
    assert rec["num_images"] == 64 and "validation_atypical" in rec["title"]

    assert rec["units"]["pixel"]["miou"] == pytest.approx(
        _pixel_unit_miou_on_atypical_scenes(wd, short_side=48, crop=48, stride=16), abs=1e-6)

    proc = _run("-m", "mgca_jax.evaluate", f"--workdir={wd}", "--dataset=embedded_atypicl",
                f"--data_dir={data}")
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--dataset" in lines[0], proc.stderr


def test_evaluate_and_export_follow_the_runs_test_scale(trained, tmp_path):
    """`config.eval.test_scale` sets the embedded protocol everywhere the model is scored:
    a copy of the run with test_scale 1 is scored by `evaluate` at its training size (32 px
    windows, stride 16; a float64 re-count through a Segmenter built with that protocol by
    hand) and its export records the same protocol."""
    import shutil
    wd, data, _ = trained
    run = tmp_path / "wd"
    shutil.copytree(wd, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["eval"]["test_scale"] = 1.0
    (run / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "scale1.json"
    proc = _run("-m", "mgca_jax.evaluate", f"--workdir={run}", "--dataset=embedded_atypical",
                f"--data_dir={data}", "--unit=pixel", f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())["results"]["embedded_atypical"]
    assert (rec["protocol"]["short_side"], rec["protocol"]["crop"], rec["protocol"]["stride"]) == (32, 32, 16)

    assert rec["units"]["pixel"]["miou"] == pytest.approx(
        _pixel_unit_miou_on_atypical_scenes(run, short_side=32, crop=32, stride=16), abs=1e-6)

    proc = _run("-m", "mgca_jax.export", f"--workdir={run}", f"--out={tmp_path / 'export'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["protocol"] == {"short_side": 32, "max_long": 128, "crop": 32, "stride": 16}


def test_evaluate_dataset_keys_name_their_splits():
    """`embedded` follows the run's eval_split; `embedded_validation` is validation always."""
    from configs.common import base_config
    from mgca_jax import evaluate
    c = base_config()
    c.data.eval_split = "tune"
    assert {k: evaluate.embedded_split(c, k) for k in evaluate.EMBEDDED_DATASETS} == {
        "embedded": "tune", "embedded_validation": "validation",
        "embedded_atypical": "validation_atypical", "embedded_tune": "tune",
        "embedded_tune_atypical": "tune_atypical"}
    c.data.eval_split = "validation"
    assert evaluate.embedded_split(c) == "validation"


def test_trainer_scores_each_evaluation_split_with_its_atypical_partner():
    import types
    from configs.common import base_config
    from mgca_jax import train
    splits = {s: None for s in ("train", "validation", "validation_atypical", "tune", "tune_atypical")}
    builder = types.SimpleNamespace(info=types.SimpleNamespace(splits=splits))
    c = base_config()
    assert train.eval_splits(c, builder) == ["validation", "validation_atypical"]
    c.data.eval_split = "tune"
    assert train.eval_splits(c, builder) == ["tune", "tune_atypical"]
    c.data.eval_split = "validation_atypical"          # no partner of its own
    assert train.eval_splits(c, builder) == ["validation_atypical"]
    c.data.name = "cc3m"
    c.data.eval_split = "validation"
    assert train.eval_splits(c, builder) == ["validation"]
