"""Diagnostics of a trained run's dense features on the embedded validation split.

  .venv/bin/python benchmarks/dense_diagnostics.py --workdir=workdirs/demo

Prints, from the latest checkpoint (masks are read here for diagnosis only;
training never sees them):
- object-pixel accuracy: argmax over the classes on ground-truth object pixels
  (is the class right where there is an object?);
- mean best-class cosine on background and on object pixels (can any threshold
  separate them?);
- mIoU of the pixel unit for a sweep of background thresholds (TCL's rule).
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mgca_jax import train  # noqa: E402
from mgca_jax.data import input_pipeline  # noqa: E402
from mgca_jax.evaluation import metrics, protocol, zeroshot  # noqa: E402
from mgca_jax.models.two_tower import make_model  # noqa: E402

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    with open(os.path.join(args.workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    builder, tok = train.setup(config)
    ctx = input_pipeline.make_context(config, tok)
    model = make_model(config)
    tx, _ = train.make_optimizer(config)
    _, abstract = train.abstract_state(model, tx, config)
    mngr = train.checkpoint_manager(args.workdir, config)
    params = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract))["params"]
    names = train.eval_class_names(config)
    class_emb = zeroshot.class_embeddings(model, params, tok, names,
                                          protocol.get_templates(config.eval.templates),
                                          config.input.max_len)
    scores, masks = [], []
    for b in input_pipeline.as_numpy(input_pipeline.eval_dataset(config, builder, ctx)):
        x = b["image"]                    # uint8 (older workdirs' configs normalised already)
        x = protocol.normalize(x) if x.dtype == np.uint8 else x
        s = zeroshot.patch_scores(model, params, jnp.asarray(x), class_emb)
        h, w = b["mask"].shape[1:]
        scores.append(np.asarray(jax.image.resize(s, (s.shape[0], h, w, s.shape[-1]), "linear")))
        masks.append(b["mask"])
    s, m = np.concatenate(scores), np.concatenate(masks)
    obj, best, label = (m > 0) & (m != 255), s.max(-1), s.argmax(-1) + 1
    bg = m == 0
    print(f"step {mngr.latest_step()}: object-pixel accuracy {100 * (label[obj] == m[obj]).mean():.1f} % "
          f"(chance {100 / len(names):.1f} %)")
    print(f"mean best-class cosine: background {best[bg].mean():.3f}, objects {best[obj].mean():.3f}")
    row = []
    for t in THRESHOLDS:
        acc = metrics.ConfusionAccumulator(len(names) + 1)
        acc.update(np.where(best >= t, label, 0), m)
        row.append(f"{t}: {100 * acc.compute()['miou']:.2f}")
    print("pixel-unit mIoU (%) by bg_thresh  " + "  ".join(row))


if __name__ == "__main__":
    main()
