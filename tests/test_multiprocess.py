"""2 processes x 4 host CPU devices (jax.distributed on localhost) == 1 process x 8 devices."""
import os
import socket
import subprocess
import sys

import numpy as np

WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_worker.py")
STEPS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker, last_args, devices_each):
    """One process of `worker` per entry of last_args (its final argument), joined through
    jax.distributed on localhost; returns their stdouts once all exited with status 0."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, worker, str(i), str(len(last_args)), coordinator, str(a)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, a in enumerate(last_args)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def run(num_processes, devices_each):
    outs = launch(WORKER, [STEPS] * num_processes, devices_each)
    line = [l for l in outs[0].splitlines() if l.startswith("losses:")][0]
    return np.array([float(x) for x in line.split()[1:]])


def test_two_processes_match_one():
    single = run(1, 8)
    multi = run(2, 4)
    assert single.shape == (STEPS,) and np.all(np.isfinite(single))
    assert single[0] != single[-1]  # parameters did change
    np.testing.assert_allclose(multi, single, rtol=1e-5)


DATA_WORKER = os.path.join(os.path.dirname(__file__), "multiprocess_data_worker.py")


def run_data_setup(data_dirs):
    """One process per entry of data_dirs (its config.data_dir); returns their stdouts."""
    return launch(DATA_WORKER, data_dirs, 1)


def test_shared_data_dir_is_prepared_once_by_process_0(tmp_path):
    outs = run_data_setup([tmp_path, tmp_path])
    assert "generating mgca_scenes" in outs[0] and "training tokenizer" in outs[0]
    assert "generating" not in outs[1] and "training" not in outs[1]      # it read process 0's
    hashes = [[l for l in out.splitlines() if l.startswith("tokenizer:")] for out in outs]
    assert len(hashes[0]) == 1 and hashes[0] == hashes[1]


def test_unshared_data_dir_names_the_missing_tokenizer(tmp_path):
    outs = run_data_setup([tmp_path / "host0", tmp_path / "host1"])
    assert "generating mgca_scenes" in outs[1]                           # scenes: made locally
    assert "training" not in outs[1]                                     # tokenizer: never
    missing = tmp_path / "host1" / "mgca_scenes" / "tiny"
    assert f"error: config.input.tokenizer: process 1 does not see {missing}" in outs[1], outs[1]
