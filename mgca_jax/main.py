"""Entry point: python -m mgca_jax.main --config=configs/demo.py --workdir=DIR [--config.x=y].

Bad input (config file or field, data dir, variant, batch split, a batch far
too big for memory) ends with a one-line error naming it and exit status 2,
before anything is written. Values that run but are probably not meant print
`warning: ...` lines.
"""
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mgca_jax.quiet import import_tensorflow

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")


def fail(message: str):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _config_file(argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg[len("--config="):]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _missing_field_message(e: Exception, argv) -> str:
    """`--config.bach_size=3: config has no field 'bach_size' (did you mean 'batch_size'?)`."""
    text = e.args[0] if e.args else str(e)
    while isinstance(text, BaseException):  # ml_collections wraps a KeyError in an AttributeError
        text = text.args[0] if text.args else str(text)
    text = str(text)
    first = text.splitlines()[0].strip().strip("'\"") if text else ""
    if not first or " " in first:
        return text.splitlines()[0] if text else repr(e)
    flag = next((a for a in argv if a.startswith("--config.")
                 and first in a.split("=", 1)[0][len("--config."):].split(".")), None)
    hint = re.search(r"Did you mean [\"']([^\"']+)[\"']", text)
    return (f"{flag or '--config'}: config has no field '{first}'"
            + (f" (did you mean '{hint.group(1)}'?)" if hint else ""))


def parse_flags(argv):
    """absl flag parsing with one-line errors (e.g. --config.lr=abc, a misspelt field)."""
    path = _config_file(argv)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
        fail(f"--config: file {path.split(':', 1)[0]} does not exist")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (KeyError, AttributeError) as e:
        fail(_missing_field_message(e, argv))
    except (ValueError, TypeError) as e:
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
    logging.set_verbosity(logging.ERROR)  # tfds and orbax warn about routine states
    maybe_initialize_distributed()
    import jax
    from mgca_jax import memory_check
    from mgca_jax.config_check import ConfigError, check_config, config_warnings
    from mgca_jax.faults import TrainError
    config = _CONFIG.value.unlock()
    try:
        check_config(config, jax.device_count())  # before TensorFlow is imported
        too_big = memory_check.check_batch_fits(config)
        if too_big:
            fail(too_big)
        for warning in config_warnings(config):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        tf = import_tensorflow()
        tf.config.set_visible_devices([], "GPU")
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
        from mgca_jax import train
        train.train_and_evaluate(config, _WORKDIR.value)
    except (ConfigError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0])
    except TrainError as e:   # a fault: exit 2 (bad workdir) or 3 (non-finite loss)
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
