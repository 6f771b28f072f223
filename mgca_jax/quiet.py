"""Quiet start-up: TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL.

`import_tensorflow()` imports TensorFlow with file descriptor 2 pointed at /dev/null,
so the oneDNN / CUDA / absl start-up lines never reach the terminal; an import error
is still raised (and printed) after stderr is restored.
"""
import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def stderr_silenced():
    """Points file descriptor 2 (C and C++ code included) at /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    if "tensorflow" not in sys.modules:
        with stderr_silenced():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]
