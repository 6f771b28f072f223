"""Entry point: python -m mgca_jax.main --config=configs/demo.py --workdir=DIR [--config.x=y].

Bad input (config field, data dir, variant, batch split) ends with a one-line
error naming it and exit status 2, before anything is written.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv):
    """absl flag parsing with one-line errors (e.g. --config.lr=abc)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        fail(str(e).splitlines()[0] if str(e) else repr(e))


def maybe_initialize_distributed():
    """jax.distributed.initialize when launched as several processes (SLURM, TPU pod, env)."""
    import jax
    multi = (int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1
             or int(os.environ.get("SLURM_NTASKS", "1")) > 1
             or "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"])
    if not multi:
        return
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)


def main(argv):
    del argv
    if _CONFIG.value is None:
        fail("--config is required, e.g. --config=configs/demo.py")
    if not _WORKDIR.value:
        fail("--workdir is required")
    if "://" in _WORKDIR.value:
        fail(f"--workdir: {_WORKDIR.value} is a URL; only paths are supported, so mount it "
             "(e.g. with gcsfuse) at the same path on every host")
    logging.set_verbosity(logging.WARNING)
    maybe_initialize_distributed()
    import jax
    from mgca_jax.config_check import ConfigError, check_config
    config = _CONFIG.value.unlock()
    try:
        check_config(config, jax.device_count())  # before TensorFlow's start-up chatter
        import tensorflow as tf
        tf.config.set_visible_devices([], "GPU")
        from mgca_jax import train
        train.train_and_evaluate(config, _WORKDIR.value)
    except (ConfigError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
