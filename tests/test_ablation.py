"""mgca_jax/ablation.py: the table arithmetic and the in-place results block."""
import os
import statistics

import pytest

from mgca_jax import ablation


def test_summarise_against_hand_computed_figures():
    rows = {r["variant"]: r for r in ablation.summarise(
        {"image-text only": [6.0, 7.0, 8.0], "full objective": [20.0, 22.0, 24.0]})}
    base, full = rows["image-text only"], rows["full objective"]
    assert base["mean"] == 7.0 and base["std"] == 1.0 and "gap_in_std" not in base
    assert full["mean"] == 22.0 and full["std"] == 2.0
    assert full["gap_in_std"] == pytest.approx((22.0 - 7.0) / 2.0)   # larger of the two stds
    assert statistics.stdev([20.0, 22.0, 24.0]) == full["std"]


def test_markdown_block_is_replaced_in_place(tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\nbefore\n")
    rows = ablation.summarise({"image-text only": [1.0, 2.0], "+ pixel": [5.0, 6.0]})
    weights = {v: ablation.variant_weights({}, v) for v in ablation.VARIANTS}
    ablation.write_into(str(path), ablation.markdown(rows, "python -m mgca_jax.ablation", 10, weights))
    first = path.read_text()
    assert first.startswith("# Results\n\nbefore\n") and "| + pixel |" in first
    assert "5.50 ± 0.71" in first and "+5.7" in first     # (5.5 - 1.5) / 0.707
    path.write_text(first + "\nafter\n")
    rows = ablation.summarise({"image-text only": [1.0, 3.0]})
    ablation.write_into(str(path), ablation.markdown(rows, "cmd", 10, weights))
    second = path.read_text()
    assert second.count(ablation.BEGIN) == 1 and "| + pixel |" not in second
    assert "2.00 ± 1.41" in second and second.endswith("after\n") and "before" in second


def test_unknown_variant_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        ablation.main(["--variants=image-text only,bogus", "--root=/tmp/unused"])
    assert "--variants" in str(e.value.code) and "bogus" in str(e.value.code)


def test_variants_take_the_config_weights():
    # configs/demo.py: every term on, pixel-level terms at 0.3.
    demo = ablation.config_weights(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
    assert demo == dict(image_text=1.0, object=1.0, region=1.0, pixel=0.3, background=0.3)
    assert ablation.variant_weights(demo, "+ pixel") == dict(
        image_text=1.0, object=0.0, region=0.0, pixel=0.3, background=0.3)
    assert ablation.variant_weights(demo, "full objective") == demo
    # a term the config leaves off is switched on at weight 1
    assert ablation.variant_weights(dict(image_text=1.0), "+ region")["region"] == 1.0


def test_split_scores_reads_every_split_and_older_records():
    record = {"step": 5, "miou": 0.25, "splits": {"validation": {"miou": 0.25},
                                                  "validation_atypical": {"miou": 0.125}}}
    assert ablation.split_scores(record) == {"validation": 25.0, "validation_atypical": 12.5}
    assert ablation.split_scores({"step": 5, "miou": 0.5}) == {"validation": 50.0}


def test_main_writes_one_table_per_split_from_the_runs_json(tmp_path, capsys):
    import json
    root = tmp_path / "abl"
    per_seed = {("image-text only", 0): (0.10, 0.05), ("image-text only", 1): (0.12, 0.07),
                ("full objective", 0): (0.30, 0.20), ("full objective", 1): (0.34, 0.22)}
    for (variant, seed), (val, atyp) in per_seed.items():
        d = ablation.run_dir(str(root), variant, seed)
        os.makedirs(d)
        with open(os.path.join(d, "eval_step7.json"), "w") as f:
            json.dump({"step": 7, "miou": val, "splits": {"validation": {"miou": val},
                                                           "validation_atypical": {"miou": atyp}}}, f)
    out_md = tmp_path / "r.md"
    ablation.main([f"--root={root}", "--steps=7", "--seeds=0,1", f"--results={out_md}",
                   "--variants=image-text only,full objective"])
    text = out_md.read_text()
    assert "on the validation split" in text and "on the validation_atypical split" in text
    assert "32.00 ± 2.83" in text and "21.00 ± 1.41" in text      # hand: mean/stdev of 30,34 and 20,22
    assert "+10.6" in text and "+7.4" in text   # (21 - 6) / max(1.41, 1.41); (32 - 11) / max(1.41, 2.83)


def test_named_block_leaves_the_unnamed_one_alone(tmp_path, capsys):
    path = tmp_path / "results.md"
    weights = {v: ablation.variant_weights({}, v) for v in ablation.VARIANTS}
    old = ablation.markdown(ablation.summarise({"image-text only": [1.0, 3.0]}), "old", 10, weights)
    ablation.write_into(str(path), old)
    for values in ([4.0, 6.0], [8.0, 12.0]):           # written twice: replaced, not appended
        new = ablation.markdown(ablation.summarise({"image-text only": values}), "new", 20, weights)
        ablation.write_into(str(path), new, "s600")
    text = path.read_text()
    begin, end = ablation.markers("s600")
    assert text.count(begin) == 1 and text.count(end) == 1 and text.count(ablation.BEGIN) == 1
    assert "2.00 ± 1.41" in text                        # the unnamed block, untouched
    assert "10.00 ± 2.83" in text and "5.00 ± 1.41" not in text
    assert text.index(ablation.END) < text.index(begin)
    with pytest.raises(SystemExit) as e:
        ablation.main(["--block=a b", "--root=/tmp/unused"])
    assert "--block" in str(e.value.code)


def test_object_class_score_leaves_background_and_undefined_classes_out():
    iou = {"background": 0.9, "circle": 0.1, "square": 0.0, "star": float("nan")}
    record = {"step": 5, "miou": 1.0 / 3.0, "splits": {"validation_atypical": {"miou": 1.0 / 3.0, "iou": iou}}}
    scores = ablation.split_scores(record)
    assert scores["validation_atypical"] == pytest.approx(100.0 / 3.0)
    assert scores["validation_atypical (object classes)"] == pytest.approx(5.0)   # (10 + 0) / 2
    # without a background class there is nothing to leave out
    assert ablation.split_scores({"step": 5, "miou": 0.2, "iou": {"a": 0.1, "b": 0.3}}) == {"validation": 20.0}
    text = ablation.markdown(ablation.summarise({"image-text only": [1.0, 2.0]}), "cmd", 7,
                             {"image-text only": {"image_text": 1.0}}, "validation_atypical (object classes)")
    assert "on the validation_atypical split, mean over the object classes (background left out), 7 steps" in text


def test_printed_command_keeps_its_quoting(tmp_path, capsys):
    import json
    import shlex
    root = tmp_path / "abl"
    for seed in (0, 1):
        d = ablation.run_dir(str(root), "image-text only", seed)
        os.makedirs(d)
        with open(os.path.join(d, "eval_step7.json"), "w") as f:
            json.dump({"step": 7, "miou": 0.1 + seed / 100}, f)
    argv = [f"--root={root}", "--steps=7", "--seeds=0,1", "--variants=image-text only"]
    ablation.main(argv)
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Command: "))
    assert shlex.split(line[len("Command: `"):-1])[3:] == argv     # pastes back into a shell as run
