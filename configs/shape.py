"""The embedded world's shape recipe (issue 17; docs/results.md, "Shape, not colour"):

  python -m mgca_jax.main --config=configs/shape.py --workdir=workdirs/shape

The demo's towers and data, trained with the presence term alone (docs/method.md, term 6) on
truthfully recoloured images (`recolour(1.0)`: channel maps, colour words cut), for 6000 steps
(about 67 min on 2 CPU cores; 6000 rather than 3000 chosen on the tune splits, session 17). It
learns shape where the demo learns colour: read its `validation_atypical` table. Scored with the
one prompt its text tower saw (`simple`) at its training size (`eval.test_scale` 1) and
`eval.bg_thresh` 0.1, both chosen on the tune splits.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
import demo  # noqa: E402


def get_config():
    c = demo.get_config()
    common.multi_grained_loss(c, image_text=0.0, object=0.0, region=0.0, pixel=0.0,
                              background=0.0, presence=1.0)
    c.input.recolour_prob = 1.0
    c.total_steps = 6000
    c.eval.every = 500
    c.eval.templates = "simple"
    c.eval.test_scale = 1.0
    c.eval.bg_thresh = 0.1
    return common.smoke(c)
