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


def run(num_processes, devices_each):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), coordinator, str(STEPS)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(num_processes)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    line = [l for l in outs[0][0].splitlines() if l.startswith("losses:")][0]
    return np.array([float(x) for x in line.split()[1:]])


def test_two_processes_match_one():
    single = run(1, 8)
    multi = run(2, 4)
    assert single.shape == (STEPS,) and np.all(np.isfinite(single))
    assert single[0] != single[-1]  # parameters did change
    np.testing.assert_allclose(multi, single, rtol=1e-5)
