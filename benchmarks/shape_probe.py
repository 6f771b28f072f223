"""Can the image tower learn shape at all? A supervised probe, no captions (issue 17).

  python benchmarks/shape_probe.py --steps=600 --mode=presence [--stem=patch] [--radius=1]

Trains the project's ViT (`mgca_jax.models.vit.ViT`, the demo's variant and attention
radius by default) with a per-patch linear head on scenes of the `no_colour_cue` world,
where colour says nothing about the class, so only shape can lower the loss:
- `presence`: the classes present in the image (what a caption gives, without text),
  with top-k multiple-instance pooling of the patch scores, as the demo's image-text term;
- `dense`: each patch's class fractions from the mask (softmax cross-entropy; an upper
  bound that uses masks, which training never sees).
Every `--every` steps it prints the loss, the rate, the ETA and the zero-shot-free mIoU of the
patch-grid prediction on 300 atypical-colour scenes and 300 standard scenes of their own
seeds (998, 999; the train stream is seed 11, none of the data set's split streams), with
the all-background predictor for reference. A curve that stays at all-background says the
tower does not learn shape at that budget, whatever the caption objective.
"""
import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mgca_jax.data import scenes  # noqa: E402
from mgca_jax.evaluation import metrics  # noqa: E402
from mgca_jax.losses import l2_normalize  # noqa: E402
from mgca_jax.models.vit import STEMS, ViT, parse_variant  # noqa: E402

NUM_CLASSES = len(scenes.CLASS_NAMES)


def generate(seed, count, size, colours):
    """images uint8 [n, S, S, 3], masks uint8 [n, S, S], presence float32 [n, 8]."""
    images, masks, present = [], [], []
    for i in range(count):
        try:
            ex = scenes.make_example(seed, i, size, colours)
        except scenes.NoAtypicalColouring:
            continue
        images.append(ex["image"])
        masks.append(ex["mask"])
        present.append(np.isin(np.arange(1, NUM_CLASSES + 1),
                               [scenes.CLASS_IDS[o] for o in ex["objects"]]).astype(np.float32))
    return np.stack(images), np.stack(masks), np.stack(present)


class Probe(nn.Module):
    variant: str
    stem: str
    radius: str
    outputs: int
    head: str = "linear"

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        out = ViT(self.variant, stem=self.stem, attention_radius=self.radius)(x)
        if self.head == "linear":
            return nn.Dense(self.outputs, name="head")(out["patches"])   # [B, L, outputs]
        # "cosine": the presence term's logits, (cos(patch, class vector) - 0.3) / 0.1, with
        # free class vectors in place of the text tower's units
        patches = l2_normalize(nn.Dense(128, name="proj")(out["patches"]))
        classes = l2_normalize(self.param("classes", nn.initializers.normal(1.0), (self.outputs, 128)))
        return (patches @ classes.T - 0.3) / 0.1


def patch_targets(masks, patch):
    """[n, S, S] -> [n, L, 9]: the fraction of each class (0 = background) in each patch."""
    n, s, _ = masks.shape
    g = s // patch
    cells = masks.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(n, g * g, -1)
    return np.stack([(cells == c).mean(-1) for c in range(NUM_CLASSES + 1)], -1).astype(np.float32)


def patch_labels(logits, mode):
    """[n, L, C] -> [n, L] labels 0..8: argmax (dense) or the best class above 0.5 (presence)."""
    if mode == "dense":
        return logits.argmax(-1)
    prob = 1 / (1 + np.exp(-logits))
    return np.where(prob.max(-1) >= 0.5, prob.argmax(-1) + 1, 0)


def miou(labels_grid, masks):
    """Per-class IoU (0..8, in %) of patch labels upsampled to the masks' pixels."""
    n, s, _ = masks.shape
    g = int(round(np.sqrt(labels_grid.shape[1])))
    pred = labels_grid.reshape(n, g, g).repeat(s // g, 1).repeat(s // g, 2)
    conf = metrics.confusion_matrix(pred, masks, NUM_CLASSES + 1)
    inter = np.diag(conf)
    return 100 * inter / np.maximum(conf.sum(0) + conf.sum(1) - inter, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--mode", choices=("presence", "dense"), default="presence")
    ap.add_argument("--variant", default="mu/8")
    ap.add_argument("--stem", choices=STEMS, default="patch")
    ap.add_argument("--radius", default="1", help="attention radius ('' = global)")
    ap.add_argument("--head", choices=("linear", "cosine"), default="linear",
                    help="presence: a linear head, or the presence term's cosine logits")
    ap.add_argument("--topk", type=float, default=0.03, help="presence: pooled fraction of patches")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train_scenes", type=int, default=8000)
    ap.add_argument("--eval_scenes", type=int, default=300)
    ap.add_argument("--train_colours", default="no_colour_cue", choices=sorted(scenes.COLOUR_POLICIES))
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args(argv)
    patch = parse_variant(args.variant)["patch"]
    if args.size % patch or args.steps < 1 or args.batch < 1 or args.train_scenes < 1:
        sys.exit(f"shape_probe: --size {args.size} must be a multiple of the patch {patch}; "
                 "--steps, --batch, --train_scenes must be positive")

    t0 = time.perf_counter()
    train_x, train_m, train_p = generate(11, args.train_scenes, args.size, args.train_colours)
    evals = {name: generate(seed, args.eval_scenes, args.size, name)[:2]
             for name, seed in (("atypical", 999), ("standard", 998))}
    print(f"scenes generated in {time.perf_counter() - t0:.1f} s", flush=True)
    for name, (_, masks) in evals.items():
        ceiling = miou(patch_targets(masks, patch).argmax(-1), masks)
        print(f"{name}: all-background mIoU {miou(np.zeros((len(masks), 1), np.int64), masks).mean():.2f}, "
              f"ceiling of the patch grid (each patch's majority class) {ceiling.mean():.2f}")

    dense = args.mode == "dense"
    if dense and args.head != "linear":
        sys.exit("shape_probe: --head=cosine is for --mode=presence")
    model = Probe(args.variant, args.stem, args.radius, NUM_CLASSES + 1 if dense else NUM_CLASSES, args.head)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(train_x[:2]))
    optimizer = optax.adamw(optax.warmup_cosine_decay_schedule(0, args.lr, min(50, args.steps // 2), args.steps),
                            weight_decay=0.05)
    opt_state = optimizer.init(params)
    k = max(1, int(round(args.topk * (args.size // patch) ** 2)))

    def loss_fn(params, images, targets):
        logits = model.apply(params, images)
        if dense:
            return optax.softmax_cross_entropy(logits, targets).mean()
        pooled = jax.lax.top_k(jnp.swapaxes(logits, 1, 2), k)[0].mean(-1)   # [B, 8]
        return optax.sigmoid_binary_cross_entropy(pooled, targets).mean()

    @jax.jit
    def train_step(params, opt_state, images, targets, rng):
        flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
        images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
        if dense:   # targets follow the flip: reverse the patch columns
            g = args.size // patch
            flipped = targets.reshape(-1, g, g, targets.shape[-1])[:, :, ::-1].reshape(targets.shape)
            targets = jnp.where(flip[:, None, None], flipped, targets)
        loss, grads = jax.value_and_grad(loss_fn)(params, images, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict = jax.jit(model.apply)
    order = np.random.default_rng(0)
    rng = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = order.integers(0, len(train_x), args.batch)
        targets = patch_targets(train_m[idx], patch) if dense else train_p[idx]
        rng, step_rng = jax.random.split(rng)
        params, opt_state, loss = train_step(params, opt_state, jnp.asarray(train_x[idx]),
                                             jnp.asarray(targets), step_rng)
        if step % args.every == 0 or step == args.steps:
            loss = float(loss)
            if not np.isfinite(loss):
                sys.exit(f"shape_probe: non-finite loss at step {step}")
            rate = step / (time.perf_counter() - t0)
            line = [f"step {step}/{args.steps}", f"loss {loss:.4f}", f"{rate:.2f} steps/s",
                    f"ETA {(args.steps - step) / rate:.0f} s"]
            for name, (images, masks) in evals.items():
                logits = np.concatenate([np.asarray(predict(params, jnp.asarray(images[i:i + 100])))
                                         for i in range(0, len(images), 100)])
                iou = miou(patch_labels(logits, args.mode), masks)
                line.append(f"{name} mIoU {iou.mean():.2f} (classes {' '.join(f'{v:.0f}' for v in iou[1:])})")
            print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
