"""benchmarks/input_pipeline.py and benchmarks/param_memory.py: core functions on tiny settings."""
import importlib.util
import os
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import cc3m  # noqa: E402


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                  os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def param_memory():
    return _load("param_memory")


@pytest.fixture(scope="module")
def input_bench():
    return _load("input_pipeline")


def tiny_cc3m_config():
    c = cc3m.get_config()
    c.model.image_variant = "mu/8"
    c.model.text_variant = "mu"
    c.model.vocab_size = 500
    c.input.image_size = 32
    c.input.max_len = 16
    c.input.object_max_len = 8
    return c


def test_param_memory_fsdp_splits_state_over_devices(param_memory):
    n = 8
    assert jax.device_count() >= n
    mesh = param_memory.sharding.make_mesh(jax.devices()[:n])
    config = tiny_cc3m_config()
    rep = param_memory.state_memory(config, mesh, "replicated")
    fsdp = param_memory.state_memory(config, mesh, "fsdp")
    assert rep["params"] == fsdp["params"] > 100_000
    # replicated: every device holds everything; float32 params, AdamW mu + nu (+ counters)
    assert rep["param_bytes"] == rep["global_param_bytes"] == 4 * rep["params"]
    assert abs(rep["opt_bytes"] - 2 * rep["param_bytes"]) < 1024
    assert rep["whole_bytes"] == 0 or rep["whole_bytes"] == rep["param_bytes"] + rep["opt_bytes"]
    # fsdp: the split leaves are 1/n per device, the small ones stay whole (no padding)
    rep_state = rep["param_bytes"] + rep["opt_bytes"]
    fsdp_state = fsdp["param_bytes"] + fsdp["opt_bytes"]
    assert n * fsdp_state == rep_state + (n - 1) * fsdp["whole_bytes"]
    assert 0 < fsdp["whole_bytes"] < 0.2 * rep_state
    assert rep_state / n <= fsdp_state < rep_state / 3
    assert fsdp["global_param_bytes"] == rep["global_param_bytes"]


def test_param_memory_table_rows(param_memory):
    rows = param_memory.table(["mu/8"], 2, vocab_size=500)
    (variant, res), = rows
    assert variant == "mu/8" and set(res) == {"replicated", "fsdp"}
    assert res["fsdp"]["param_bytes"] < res["replicated"]["param_bytes"]


def test_stage_specs_split_the_cc3m_chain(input_bench):
    c = cc3m.get_config()
    specs = input_bench.stage_specs(c.input.pp_train.format(**c.input))
    assert specs["decode"] == "decode"
    assert specs["augment"] == ("random_resized_crop(224, 0.9, 1.0, antialias=False)|"
                               "flip_lr|normalize")
    assert specs["tokenize"] == "tokenize(77)|object_words(4)|object_prompts(16)"
    assert specs["pp_train"].startswith("decode|") and "keep(" in specs["pp_train"]


def test_input_stage_rates_on_a_tiny_built_dataset(input_bench, tmp_path):
    from mgca_jax.data import input_pipeline
    builder = input_bench.build_dataset(str(tmp_path), num_images=6, width=64, height=48,
                                        num_workers=1)
    assert builder.info.splits["train"].num_examples == 6
    assert input_bench.build_dataset(str(tmp_path), 6, 64, 48).data_dir == builder.data_dir
    mean_bytes, mean_px = input_bench.stored_image_stats(builder)
    assert mean_px == 64 * 48 and mean_bytes > 500
    config = tiny_cc3m_config()
    config.data_dir = str(tmp_path)
    ctx = input_pipeline.make_context(config, input_pipeline.get_tokenizer(config, builder))
    specs, rates = input_bench.input_rates(config, builder, ctx, seconds=0.05, min_images=8,
                                           parallels=(1,))
    assert set(rates) == {(s, 1) for s in ("decode", "augment", "tokenize", "pp_train")}
    assert all(r["wall"] > 0 and r["cpu"] > 0 for r in rates.values()), rates
    assert specs["augment"] == ("random_resized_crop(32, 0.9, 1.0, antialias=False)|"
                               "flip_lr|normalize")
    config.batch_size = 4
    config.input.shuffle_buffer = 8
    assert min(input_bench.measure_train_dataset(config, builder, ctx, seconds=0.05).values()) > 0
    # benchmarks/pp_train_paths.py: its `before` chain tokenizes through the old ragged path,
    # to the same ids; both chains time on the same source
    paths = _load("pp_train_paths")
    chains = {"before": paths.BEFORE.replace("{tokenize}", "tokenize_ragged").format(**config.input),
              "after": config.input.pp_train.format(**config.input)}
    source = input_bench.cached_source(builder)
    seeded = source.enumerate().map(input_pipeline._add_seed(0))
    outs = [next(iter(seeded.map(paths.ops.build(spec, ctx)).as_numpy_iterator()))
            for spec in chains.values()]
    assert outs[0]["tokens"].tolist() == outs[1]["tokens"].tolist() and outs[0]["tokens"][0] == 2
    image = tf.random.uniform([5, 7, 3], 0, 255)
    old, new = (paths.ops.build(op, ctx)({"image": image})["image"].numpy()
                for op in ("normalize_broadcast", "normalize"))
    np.testing.assert_allclose(old, new, rtol=1e-6, atol=1e-6)
    rates = paths.alternate(source, chains, ctx, rounds=2, seconds=0.05, min_images=4)
    assert {k: len(v) for k, v in rates.items()} == {"before": 2, "after": 2}
    assert min(min(v) for v in rates.values()) > 0
    assert input_bench.cores_needed(1000.0, 250.0) == pytest.approx(4.0)


def test_sigterm_benchmark_stops_when_the_trainer_dies(tmp_path):
    """benchmarks/sigterm_exit.sh stops with an error (not a wait loop) when the trainer
    exits before step 50; here it cannot start (a missing config)."""
    import subprocess
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "sigterm_exit.sh"), "0",
                           str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: the trainer exited before step 50" in proc.stderr, proc.stderr


def test_inference_speed_takes_the_patch_from_the_variant():
    import subprocess
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "inference_speed.py"),
                           "--variant=mu/8", "--size=48", "--train_size=32", "--embed_dim=16",
                           "--classes=3", "--images=1", "--windows_per_device=1", "--repeats=1",
                           "--units=pixel"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mu/8 at 48x48 (6x6 = 36 patches)" in proc.stdout, proc.stdout
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith("pixel ")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and float(rows[0][3]) > 0, proc.stdout


def test_op_name_key_merges_blocks_and_names_the_pass():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from train_step_speed import op_name_key
    assert op_name_key("jit(step)/transpose(jvp(TwoTower))/image/encoder/block03/mlp/fc1/dot_general") == (
        "backward", "image/encoder/blockNN/mlp/fc1/dot_general")
    assert op_name_key("jit(step)/jvp(TwoTower)/text/block11/attn/div") == ("forward", "text/blockNN/attn/div")


def test_train_step_speed_prints_rates_and_breakdown():
    """Small dims, one step, no peer: the rate row and the breakdown's parts are printed."""
    import subprocess
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    script = os.path.join(ROOT, "benchmarks", "train_step_speed.py")
    proc = subprocess.run([sys.executable, script, "--batch=4", "--image_size=16", "--max_len=8",
                           "--vocab=32", "--embed_dim=16", "--steps=1", "--repeats=1",
                           "--modes=image_text", "--op_profile=1000"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, _, profile = proc.stdout.partition("op profile of mgca_jax image_text")
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in head.splitlines()
            if ln.startswith("| ") and not ln.startswith("| ---")}
    assert float(rows["mgca_jax image_text"][0]) > 0, proc.stdout
    for part in ("image tower", "text tower (captions)", "loss: image_text", "optimizer (AdamW update)"):
        ms, gflop, mbytes = map(float, rows[part])
        assert ms > 0 and gflop > 0, (part, proc.stdout)
        assert mbytes > 0, (part, proc.stdout)
    # AdamW reads gradients, both moments and parameters and writes both moments and the
    # update: at least 7 float32 values per parameter (params printed in millions, 2 decimals)
    millions = float(proc.stdout.split("mgca_jax image_text: ")[1].split("M params")[0])
    assert float(rows["optimizer (AdamW update)"][2]) >= 7 * 4 * (millions - 0.005), proc.stdout
    # the op profile joins the trace's op events to the HLO: each tower's first MLP matmul
    # appears forward and backward, once per block (mu: 4 image blocks, 3 text blocks)
    ops = [[c.strip() for c in ln.split("|")[1:-1]] for ln in profile.splitlines()
           if ln.startswith("| ") and not ln.startswith("| ---") and not ln.startswith("| ms")]
    for tower, blocks in (("image_tower", 4), ("text_tower", 3)):
        for direction in ("forward", "backward"):
            fc1 = [r for r in ops if r[4] == direction and r[5].endswith(
                f"{tower}/encoder/blockNN/mlp/fc1/dot_general")]
            assert fc1 and float(fc1[0][0]) > 0, (tower, direction, profile)
            if direction == "forward":
                assert float(fc1[0][2]) == blocks, (tower, profile)
    assert "by kind, share of the op time: " in profile and "matmul (dot_general)" in profile, profile
    bad = subprocess.run([sys.executable, script, "--batch=0"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --batch: must be positive, got 0"], bad.stderr


@pytest.mark.parametrize("variant,size,text_variant,max_len", [("mu/8", 64, "mu", 32), ("Ti/16", 96, "S", 20)])
def test_device_step_model_flops_match_xla_cost_analysis(variant, size, text_variant, max_len):
    """The MFU's numerator, counted by hand from the config, against XLA's count of the same
    forward passes: XLA also counts the elementwise ops (norms, GELU, softmax), 1-2 % here."""
    import jax.numpy as jnp
    from mgca_jax.models.two_tower import make_model
    device_step = _load("device_step")
    c = device_step.load_config(os.path.join(ROOT, "configs", "demo.py"), 4)
    c.model.attention_radius = ""
    c.model.image_variant, c.input.image_size = variant, size
    c.model.text_variant, c.input.max_len, c.input.object_max_len = text_variant, max_len, 8
    model, b = make_model(c), 2
    images = jnp.zeros((b, size, size, 3))
    tokens = jnp.ones((b, max_len), jnp.int32)
    prompts = jnp.ones((b * c.input.num_objects, 8), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), {"image": images, "tokens": tokens})["params"]

    def xla_flops(method, x):
        cost = jax.jit(lambda p, x: model.apply({"params": p}, x, method=method)).lower(
            params, x).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"] / b

    counted = device_step.model_flops(c)
    for part, method, x in (("image tower", model.encode_image, images),
                            ("text tower (captions)", model.encode_text, tokens),
                            ("text tower (object prompts)", model.encode_prompts, prompts)):
        ratio = xla_flops(method, x) / counted[part]
        assert ratio >= 1.0 and ratio <= 1.03, (part, ratio)


def test_device_step_runs_where_tensorflow_and_clu_are_missing(tmp_path):
    """The device image has jax, flax, optax and orbax but no TensorFlow, tensorflow-datasets
    or clu: with those blocked, the prepared GPU script runs the cc3m config's step (smoke
    dims) on CPU and writes figures that agree with each other."""
    import json
    import subprocess
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(
        "import sys\nfor m in ('tensorflow', 'tensorflow_datasets', 'clu', 'tensorflow_text'):\n"
        "    sys.modules[m] = None\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", MGCA_SMOKE="1",
               PYTHONPATH=str(tmp_path / "block"))
    script = os.path.join(ROOT, "benchmarks", "device_step.py")
    proc = subprocess.run([sys.executable, script, "--config", os.path.join(ROOT, "configs", "cc3m.py"),
                           "--batches=8", "--steps=1", "--repeats=1", "--matmul=128", "--copy_mb=4",
                           "--peak_tflops=0.5", f"--out={tmp_path}"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_step.json").read_text())
    assert report["backend"] == "cpu" and set(report["ceilings"]) == {"matmul_bf16_tflops", "copy_gb_s"}
    (r,) = report["project"]
    assert r["batch"] == 8 and r["image_variant"] == "mu/8" and len(r["terms"]) == 5
    assert r["images_s"] == pytest.approx(8 / r["step_s"])
    assert r["model_flops_step"] == 3 * 8 * sum(r["model_flops_per_image_fwd"].values())
    assert r["mfu"] == pytest.approx(r["model_flops_step"] / r["step_s"] / 0.5e12)
    # XLA's count of the whole step adds the loss terms, elementwise ops and AdamW
    assert r["xla_flops_step"] > r["model_flops_step"] > 0
    assert r["step_temp_bytes"] > r["loss_temp_bytes"] > 0
    assert "| mgca_jax (mu/8, float32, 5 terms) | 8 |" in proc.stdout, proc.stdout
    bad = subprocess.run([sys.executable, script, "--batches=8,x"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        "error: --batches: comma-separated integers, got '8,x'"), bad.stderr
