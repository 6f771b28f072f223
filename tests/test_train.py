"""Trainer: sharded step == single device, save/stop/resume, main end to end, bad input."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import tiny  # noqa: E402

from mgca_jax import sharding, train  # noqa: E402
from mgca_jax.models.two_tower import make_model  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def tiny_config(data_dir):
    c = tiny.get_config()
    c.data_dir = data_dir
    c.model.vocab_size = c.input.vocab_size     # covers the tokenizer trained for the run
    return c


def assert_finite_and_equal(a, b):
    """Trained state a == b leaf by leaf, every float leaf finite (NaN == NaN would pass)."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.floating):
            assert np.isfinite(x).all() and np.isfinite(y).all()
        np.testing.assert_array_equal(x, y)


def random_batch(config, n, seed=0):
    r = np.random.default_rng(seed)
    i = config.input
    ids = r.integers(0, 6, size=(n, i.num_objects)).astype(np.int32)
    mask = r.random((n, i.num_objects)) < 0.7
    mask[:, 0] = True
    return {"image": r.normal(size=(n, i.image_size, i.image_size, 3)).astype(np.float32),
            "tokens": np.concatenate([np.full((n, 1), 2), r.integers(4, 64, (n, 6)), np.full((n, 1), 3),
                                      np.zeros((n, i.max_len - 8), int)], 1).astype(np.int32),
            "object_ids": np.where(mask, ids, -1), "object_mask": mask,
            "object_tokens": r.integers(4, 64, (n, i.num_objects, i.object_max_len)).astype(np.int32)}


def test_sharded_step_matches_single_device(data_dir):
    config = tiny_config(data_dir)
    model = make_model(config)
    tx, schedule = train.make_optimizer(config)
    init, abstract = train.abstract_state(model, tx, config)
    state = init()
    batch = random_batch(config, 16)
    rng = jax.random.key(3)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh = sharding.make_mesh(devices)
        step, loss_fn = train.make_train_step(model, tx, schedule, config, mesh)
        grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                          in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh),
                                        sharding.replicated(mesh)))
        (loss, terms), grads = grad_fn(state["params"], batch, rng)
        results.append((float(loss), jax.tree.map(np.asarray, grads), {k: float(v) for k, v in terms.items()}))
    (l1, g1, t1), (l8, g8, t8) = results
    assert set(t1) == {"image_text", "object", "region", "pixel"}
    assert np.isfinite(l1) and all(np.isfinite(v) for v in t1.values())
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(g1))
    assert l1 == pytest.approx(l8, rel=1e-5)
    for k in t1:
        assert t1[k] == pytest.approx(t8[k], rel=1e-5, abs=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_fsdp_matches_replicated(data_dir):
    config = tiny_config(data_dir)
    model = make_model(config)
    tx, schedule = train.make_optimizer(config)
    init, abstract = train.abstract_state(model, tx, config)
    mesh = sharding.make_mesh(jax.devices()[:8])
    batch = random_batch(config, 16, seed=1)
    out = []
    for mode in ("replicated", "fsdp"):
        sh = sharding.state_shardings(abstract, mesh, mode, min_size=1024)
        state = jax.jit(init, out_shardings=sh)()
        step_fn = train.jit_train_step(train.make_train_step(model, tx, schedule, config, mesh)[0], sh, mesh)
        with jax.set_mesh(mesh):
            state, m1 = step_fn(state, batch, jax.random.key(0))
            state, m2 = step_fn(state, batch, jax.random.key(0))
        out.append((float(m1["loss"]), float(m2["loss"])))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
        if mode == "fsdp":
            emb = state["params"]["text_tower"]["token_embedding"]["embedding"]
            assert emb.sharding.spec != jax.sharding.PartitionSpec()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], out[1], rtol=1e-5)


def _restore(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
        return mngr.restore(step)


def test_save_stop_resume_is_identical(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.total_steps = 4
    config.eval.every = 0
    straight = str(tmp_path / "straight")
    train.train_and_evaluate(config.copy_and_resolve_references(), straight)
    resumed = str(tmp_path / "resumed")
    first_cfg = config.copy_and_resolve_references()
    # Stop after step 2 of the same 4-step schedule with SIGTERM (saves, then exits).
    first_cfg.checkpoint_every = 2
    _run_until(first_cfg, resumed, stop_at=2)
    with ocp.CheckpointManager(os.path.join(resumed, "checkpoints")) as mngr:
        assert mngr.all_steps() == [2]
    train.train_and_evaluate(config.copy_and_resolve_references(), resumed)
    a, b = _restore(straight, 4), _restore(resumed, 4)
    assert int(a["step"]) == int(b["step"]) == 4
    assert_finite_and_equal(a, b)
    # Steps 3-4 changed the parameters, so the equality covers the resumed data order.
    moved = [not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(_restore(resumed, 2)["params"]), jax.tree.leaves(b["params"]))]
    assert sum(moved) > 0.9 * len(moved)


def _run_until(config, workdir, stop_at):
    """Runs the trainer and raises SIGTERM in-process after `stop_at` steps."""
    import signal
    original = train.jit_train_step

    def counting(*args, **kwargs):
        step_fn = original(*args, **kwargs)
        calls = {"n": 0}

        def wrapped(*a):
            calls["n"] += 1
            if calls["n"] == stop_at:
                signal.raise_signal(signal.SIGTERM)
            return step_fn(*a)
        return wrapped
    train.jit_train_step = counting
    try:
        assert train.train_and_evaluate(config, workdir) is None  # stopped early
    finally:
        train.jit_train_step = original


def run_main(*args, env=None):
    env = dict(os.environ, **(env or {}))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    return subprocess.run([sys.executable, "-m", "mgca_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_main_end_to_end_and_bad_input(data_dir, tmp_path):
    workdir = str(tmp_path / "wd")
    proc = run_main("--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data_dir={data_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps/s" in proc.stdout and "ETA" in proc.stdout and "mIoU" in proc.stdout
    logged = [float(v) for v in re.findall(r"^step \d+/6  loss (\S+)", proc.stdout, re.M)]
    assert len(logged) == 3 and np.isfinite(logged).all(), proc.stdout
    result = json.load(open(os.path.join(workdir, "eval_step6.json")))
    iou = result["iou"]
    assert "circle" in iou and np.isfinite(list(iou.values())).all()
    assert result["miou"] == pytest.approx(np.mean(list(iou.values())))
    # 6 steps learn little: the model calls nearly everything background (IoU ~0.87 of 9
    # labels). A NaN model puts the first class everywhere (argmax of NaN): mIoU < 0.02.
    assert iou["background"] > 0.5 and result["miou"] > 0.05, result
    assert os.path.getsize(os.path.join(workdir, "segmentation_step6.png")) > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
    ckpt = os.path.join(workdir, "checkpoints")
    before = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
              for d, _, fs in os.walk(ckpt) for f in fs}
    cases = [("--config.data_dir=/nonexistent", "config.data_dir"),
             ("--config.model.image_variant=Q/16", "config.model.image_variant"),
             ("--config.batch_size=12", "config.batch_size"),
             ("--config.lr=abc", "lr"),
             ("--config.model.vocab_size=64", "config.model.vocab_size: 64 is smaller than")]
    for flag, field in cases:
        extra = [] if "data_dir" in flag else [f"--config.data_dir={data_dir}"]
        proc = run_main("--config=configs/tiny.py", f"--workdir={workdir}", *extra, flag)
        assert proc.returncode == 2, (flag, proc.stderr[-2000:])
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and field in lines[0], (flag, proc.stderr[-2000:])
    proc = run_main("--config=configs/tiny.py", "--workdir=gs://bucket/run", f"--config.data_dir={data_dir}")
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "--workdir: gs://bucket/run" in lines[0], proc.stderr
    assert not os.path.exists(os.path.join(ROOT, "gs:"))
    after = {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
             for d, _, fs in os.walk(ckpt) for f in fs}
    assert before == after


def test_kill_9_resumes_from_last_complete_checkpoint(data_dir, tmp_path):
    import signal
    workdir = str(tmp_path / "killed")
    args = ["--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
            "--config.total_steps=30", "--config.checkpoint_every=4", "--config.log_every=1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen([sys.executable, "-m", "mgca_jax.main", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("step 13/"):
            proc.send_signal(signal.SIGKILL)  # no chance to save or clean up
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpt = os.path.join(workdir, "checkpoints")
    complete = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
    assert complete and complete[-1] >= 8
    resumed = run_main(*args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    match = re.search(r"resumed from \S+/(\d+)", resumed.stdout)
    assert match and int(match.group(1)) == complete[-1]
    assert f"steps {complete[-1]}->30" in resumed.stdout
    assert os.path.exists(os.path.join(workdir, "eval_step30.json"))


def test_config_check_stops_silent_nan_and_shape_paths(data_dir, tmp_path):
    """Each check is a ConfigError naming its field, raised before data or tokenizer work."""
    from mgca_jax.config_check import ConfigError, check_config
    from mgca_jax.data.tokenizer import Tokenizer, train_tokenizer

    def fails(field, **changes):
        c = tiny_config(data_dir)
        for path, value in changes.items():
            node, *_, key = path.split("__")
            target = c if node == key else c[node]
            target[key] = value
        with pytest.raises(ConfigError, match=f"^config.{field}"):
            check_config(c, 8)

    check_config(tiny_config(data_dir), 8)                   # vocab 128 covers 128 pieces
    fails("model.vocab_size: 127 is smaller than", model__vocab_size=127)
    fails("model.vocab_size: expected", model__vocab_size=0)
    fails("input.object_max_len: 17 exceeds", input__object_max_len=17)
    fails("input.image_size: 36 is not a multiple of the patch size 8", input__image_size=36)
    fails("model.image_variant: the conv stem", model__image_variant="mu/6",
          model__image_stem="conv", input__image_size=36)
    # An explicit tokenizer file: its own piece count decides, before anything is read.
    spm = str(tmp_path / "spm.model")
    train_tokenizer([f"a photo of {w} number {i}" for i in range(50) for w in ("cat", "dog")],
                    spm, 40)
    pieces = Tokenizer(spm).vocab_size
    c = tiny_config(data_dir)
    c.input.tokenizer = spm
    c.model.vocab_size = pieces
    check_config(c, 8)
    c.model.vocab_size = pieces - 1
    with pytest.raises(ConfigError, match=f"tokenizer's {pieces} pieces"):
        check_config(c, 8)
