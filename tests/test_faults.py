"""Faults: non-finite loss, unreadable and mismatched checkpoints, a second trainer."""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mgca_jax import faults, sharding, train
from mgca_jax.models.two_tower import make_model
from test_train import ROOT, random_batch, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def main_args(workdir, data_dir, *extra):
    return [sys.executable, "-m", "mgca_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
            f"--config.data_dir={data_dir}", *extra]


def run_main(workdir, data_dir, *extra):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    return subprocess.run(main_args(workdir, data_dir, *extra), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def error_lines(proc):
    return [l for l in proc.stderr.strip().splitlines() if l.strip()]


def saved_steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def restore(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
        return mngr.restore(step)


def file_times(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, fs in os.walk(root) for f in fs}


def test_nonfinite_loss_stops_without_saving_it(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    proc = run_main(workdir, data_dir, "--config.lr=1e12", "--config.grad_clip=0",
                    "--config.total_steps=8", "--config.log_every=100")
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: non-finite "), proc.stderr[-3000:]
    # lr warms up from 0: step 1 is finite, step 2's giant update makes step 3 non-finite.
    assert " at step 3;" in lines[0] and "loss_image_text" in lines[0], lines[0]
    assert "last good checkpoint: step 2" in lines[0]
    assert saved_steps(workdir) == [2]          # step 4 (non-finite) was never saved
    params = restore(workdir, 2)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    assert not any(f.startswith("eval_step") for f in os.listdir(workdir))
    assert not os.path.exists(os.path.join(workdir, "lock"))


def test_skip_step_drops_the_update_and_counts_it(data_dir):
    config = tiny_config(data_dir)
    config.nonfinite = "skip_step"
    model = make_model(config)
    tx, schedule = train.make_optimizer(config)
    init, abstract = train.abstract_state(model, tx, config)
    mesh = sharding.make_mesh(jax.devices()[:1])
    state_sh = sharding.state_shardings(abstract, mesh, "replicated")
    step_fn = train.jit_train_step(train.make_train_step(model, tx, schedule, config, mesh)[0],
                                   state_sh, mesh)
    state = jax.jit(init, out_shardings=state_sh)()
    with jax.set_mesh(mesh):
        state, _ = step_fn(state, random_batch(config, 16, seed=0), jax.random.key(0))
        state, _ = step_fn(state, random_batch(config, 16, seed=1), jax.random.key(0))  # lr > 0
        before = jax.tree.map(np.array, state)
        bad = random_batch(config, 16, seed=2)
        bad["image"][3, 0, 0, 0] = np.nan
        state, metrics = step_fn(state, bad, jax.random.key(0))
        guard = faults.update_guard(faults.new_guard(metrics), metrics, 3)
        after_bad = jax.tree.map(np.array, state)
        state, metrics = step_fn(state, random_batch(config, 16, seed=3), jax.random.key(0))
        guard = faults.update_guard(guard, metrics, 4)
    assert int(after_bad["step"]) == int(before["step"]) + 1 == 3
    for x, y in zip(jax.tree.leaves(before["params"]) + jax.tree.leaves(before["opt_state"]),
                    jax.tree.leaves(after_bad["params"]) + jax.tree.leaves(after_bad["opt_state"])):
        np.testing.assert_array_equal(x, y)      # params and optimizer state untouched
    moved = [not np.array_equal(x, np.asarray(y)) for x, y in
             zip(jax.tree.leaves(after_bad["params"]), jax.tree.leaves(state["params"]))]
    assert sum(moved) > 0.9 * len(moved)         # the next finite step updates again
    assert faults.check_guard(guard, "skip_step", 2) == 1
    assert int(guard["first_bad_step"]) == 3
    with pytest.raises(faults.NonFiniteError, match="^non-finite .*loss_image_text.* at step 3;"):
        faults.check_guard(guard, "stop", 2)


def truncate_data_files(step_dir):
    """Halves every file under the checkpoint's data directories (what a full disk leaves)."""
    n = 0
    for d, _, fs in os.walk(step_dir):
        for f in fs:
            path = os.path.join(d, f)
            if "/d/" in path + "/" or f.startswith("ocdbt"):
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                n += 1
    assert n, f"no data files under {step_dir}"


def test_unreadable_checkpoint_is_quarantined_and_an_older_one_resumed(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.total_steps, config.eval.every = 4, 0
    workdir = str(tmp_path / "wd")
    train.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    assert saved_steps(workdir) == [2, 4]
    truncate_data_files(os.path.join(workdir, "checkpoints", "4"))
    config.total_steps = 5
    train.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    assert os.path.isdir(os.path.join(workdir, "quarantine", "4"))   # moved, not deleted
    assert saved_steps(workdir) == [4, 5]                           # resumed from 2: saved 4 and 5
    # Every checkpoint unreadable: a one-line error, nothing resumed.
    for step in saved_steps(workdir):
        truncate_data_files(os.path.join(workdir, "checkpoints", str(step)))
    with pytest.raises(faults.TrainError, match="^--workdir: no readable checkpoint in ") as e:
        train.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(os.path.join(workdir, "quarantine"))) == ["4", "4.1", "5"]


def test_resume_with_another_shape_names_the_param_before_writing(data_dir, tmp_path):
    config = tiny_config(data_dir)
    config.total_steps, config.eval.every = 2, 0
    workdir = str(tmp_path / "wd")
    train.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    before = file_times(workdir)
    config.model.embed_dim = 64
    with pytest.raises(faults.TrainError) as e:
        train.train_and_evaluate(config.copy_and_resolve_references(), workdir)
    msg = str(e.value)
    # The first param (in tree order) whose shape differs between the two configs.
    shapes = [train.abstract_state(make_model(c), train.make_optimizer(c)[0], c)[1]
              for c in (tiny_config(data_dir), config)]
    path, old, new = next((jax.tree_util.keystr(p), a.shape, b.shape) for (p, a), b in
                          zip(jax.tree_util.tree_leaves_with_path({"params": shapes[0]["params"]}),
                              jax.tree.leaves({"params": shapes[1]["params"]}))
                          if a.shape != b.shape)
    assert "\n" not in msg and "checkpoints/2" in msg, msg
    assert f"param {path} has shape {old}, the config builds {new}" in msg, msg
    assert file_times(workdir) == before and not os.path.exists(os.path.join(workdir, "lock"))


def test_second_trainer_on_a_workdir_exits_and_stale_lock_does_not_block(data_dir, tmp_path):
    workdir = str(tmp_path / "wd")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    first = subprocess.Popen(main_args(workdir, data_dir, "--config.total_steps=100000",
                                       "--config.log_every=1", "--config.checkpoint_every=1000"),
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for line in first.stdout:
            if line.startswith("step 2/"):
                break
        second = run_main(workdir, data_dir)
        lines = error_lines(second)
        assert second.returncode == 2 and len(lines) == 1, second.stderr[-3000:]
        assert f"in use by pid {first.pid} on host {socket.gethostname()}" in lines[0], lines[0]
        assert first.poll() is None                          # the first one runs on
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert "SIGTERM: saved step" in out and not os.path.exists(os.path.join(workdir, "lock"))
    # A killed run's lock (its pid gone on this host) is replaced, not obeyed.
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(os.path.join(workdir, "lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid}, f)
    config = tiny_config(data_dir)
    config.eval.every = 0
    config.total_steps = saved_steps(workdir)[-1] + 1
    train.train_and_evaluate(config, workdir)
    assert saved_steps(workdir)[-1] == config.total_steps


def test_sigterm_on_one_of_two_processes_stops_both_at_the_same_step(data_dir, tmp_path):
    """2 processes x 4 CPU devices through jax.distributed; only process 1 gets SIGTERM."""
    from test_multiprocess import free_port
    workdir = str(tmp_path / "wd")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                   JAX_COORDINATOR_ADDRESS=coordinator,
                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
        procs.append(subprocess.Popen(
            main_args(workdir, data_dir, "--config.total_steps=100000", "--config.log_every=1",
                      "--config.checkpoint_every=1000"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        lines = []
        for line in procs[0].stdout:
            lines.append(line)
            if line.startswith("step 3/"):
                break
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    outs[0] = ("".join(lines) + outs[0][0], outs[0][1])
    saved = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        saved.append([int(l.split()[3].rstrip(",")) for l in out.splitlines()
                      if l.startswith("SIGTERM: saved step")])
    assert len(saved[0]) == 1 and saved[0] == saved[1], outs
    assert saved_steps(workdir) == saved[0]
    assert saved[0][0] >= 3


def test_two_processes_agree_on_the_fallback_and_only_process_0_quarantines(tmp_path):
    """Step 6 fails on process 1 only, step 4 on process 0 only: both must resume from 2;
    6 and 4 are moved once each, by process 0."""
    from test_multiprocess import free_port
    for step in (2, 4, 6):
        os.makedirs(tmp_path / "checkpoints" / str(step))
        (tmp_path / "checkpoints" / str(step) / "data").write_text(str(step))
    worker = os.path.join(os.path.dirname(__file__), "multiprocess_quarantine_worker.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", coordinator,
                               f"{tmp_path},6:1,4:0"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "resumed: 2" in out.splitlines(), out
        assert [l.split()[2] for l in out.splitlines() if l.startswith("warning:")] == [
            f"{tmp_path}/checkpoints/6", f"{tmp_path}/checkpoints/4"], out
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    assert sorted(os.listdir(tmp_path / "quarantine")) == ["4", "6"]
    assert (tmp_path / "quarantine" / "6" / "data").read_text() == "6"
