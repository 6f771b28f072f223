"""A seconds-long smoke run (tests, first try on a new machine):

  python -m mgca_jax.main --config=configs/tiny.py --workdir=workdirs/tiny

32x32 scenes (256 train / 64 validation), micro towers, full objective, 6 steps.
It checks the plumbing end to end; its mIoU means nothing.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402


def get_config():
    c = common.multi_grained_loss(common.base_config())
    c.data.config_name = "tiny"
    c.input.image_size = 32
    c.input.max_len = 16
    c.input.vocab_size = 128
    c.input.shuffle_buffer = 256
    c.batch_size = 16
    c.total_steps = 6
    c.warmup_steps = 2
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval.batch_size = 32
    c.eval.num_examples = 4
    c.loss.region_num = 4
    c.loss.pixel_anchors = 4
    return common.smoke(c)
