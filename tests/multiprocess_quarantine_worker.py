"""One process of the multi-process quarantine test (used by test_faults).

  python tests/multiprocess_quarantine_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR SPEC
SPEC = WORKDIR,STEP:PROCESS,...: the restore of STEP fails on PROCESS only (as when one
host cannot read a file the others can). WORKDIR/checkpoints holds plain step dirs; the
checkpoint manager is a stand-in, faults.restore_newest_readable is the real one.
Prints "resumed: STEP" or "error: MESSAGE".
"""
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, n, coordinator, spec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mgca_jax import faults  # noqa: E402

workdir, *bad = spec.split(",")
fails_here = {int(b.split(":")[0]) for b in bad if int(b.split(":")[1]) == pid}
faults._shape_mismatch = lambda directory, step, target: None   # plain dirs have no metadata


class Manager:
    directory = os.path.join(workdir, "checkpoints")

    def all_steps(self):
        return sorted(int(s) for s in os.listdir(self.directory) if s.isdigit())

    def restore(self, step, args):
        if step in fails_here:
            raise ValueError(f"step {step} unreadable on process {pid}")
        return {"step": step}

    def reload(self):
        pass


try:
    _, step = faults.restore_newest_readable(Manager(), None)
    print("resumed:", step, flush=True)
except faults.TrainError as e:
    print("error:", e, flush=True)
