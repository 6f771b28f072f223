"""One process of a multi-process train run on fixed synthetic batches (used by test_multiprocess).

  python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR STEPS
Prints one line "losses: l1 l2 ..." from process 0.
"""
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, n, coordinator, steps = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if n > 1:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "configs")]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny  # noqa: E402
from test_train import random_batch  # noqa: E402

from mgca_jax import sharding, train  # noqa: E402
from mgca_jax.models.two_tower import make_model  # noqa: E402

config = tiny.get_config()
config.model.vocab_size = 64
model = make_model(config)
tx, schedule = train.make_optimizer(config)
init, abstract = train.abstract_state(model, tx, config)
mesh = sharding.make_mesh()
state_sh = sharding.state_shardings(abstract, mesh, "replicated")
state = jax.jit(init, out_shardings=state_sh)()
step_fn = train.jit_train_step(train.make_train_step(model, tx, schedule, config, mesh)[0], state_sh, mesh)
losses = []
local = config.batch_size // n
with jax.set_mesh(mesh):
    for step in range(steps):
        full = random_batch(config, config.batch_size, seed=step)
        mine = {k: v[pid * local:(pid + 1) * local] for k, v in full.items()}
        batch = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), v)
                 for k, v in mine.items()}
        state, metrics = step_fn(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
if pid == 0:
    print("losses:", " ".join(f"{x:.8f}" for x in losses), flush=True)
