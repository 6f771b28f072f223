"""The embedded default: generated captioned scenes, micro towers, CPU minutes.

  python -m mgca_jax.main --config=configs/demo.py --workdir=workdirs/demo

Expected on a 2-core CPU: see README ("The main command") for the figures.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402


def get_config():
    c = common.base_config()
    return c
