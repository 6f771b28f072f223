"""One process of a multi-process data set + tokenizer setup (used by test_multiprocess).

  python tests/multiprocess_data_worker.py PROCESS_ID NUM_PROCESSES COORDINATOR DATA_DIR
Prints "tokenizer: SHA256" or "error: MESSAGE" (the first line of a FileNotFoundError).
"""
import hashlib
import os
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, n, coordinator, data_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path[:0] = [ROOT, os.path.join(ROOT, "configs")]
import tiny  # noqa: E402

from mgca_jax.data import input_pipeline  # noqa: E402

config = tiny.get_config()
config.data_dir = data_dir
try:
    builder = input_pipeline.get_builder(config)
    tokenizer = input_pipeline.get_tokenizer(config, builder)
    print("tokenizer:", hashlib.sha256(tokenizer.model_bytes).hexdigest(), flush=True)
except FileNotFoundError as e:
    print("error:", str(e).splitlines()[0], flush=True)
