"""Zero-shot segmentation with the pixel (patch) unit, used by the trainer.

Class names -> prompt ensemble -> one normalised text embedding per class.
Image -> normalised patch embeddings -> cosine with each class -> upsampled
to image size. A pixel is background when its best class score is below
`bg_thresh` (TCL's rule: a constant map in front of the class scores).
"""
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mgca_jax.evaluation import metrics, protocol, visualize
from mgca_jax.losses import l2_normalize


def class_embeddings(model, params, tokenizer, class_names, templates, max_len):
    """[C, E]: per class, the mean of its normalised template embeddings, renormalised."""
    prompts = [t.format(name.strip()) for name in class_names for t in templates]
    tokens = np.array([tokenizer.encode(p, max_len) for p in prompts], np.int32)
    emb = _encode_text(model, params, tokens)["text_embed"]
    emb = l2_normalize(emb).reshape(len(class_names), len(templates), -1).mean(axis=1)
    return l2_normalize(emb)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(model, params, tokens):
    return model.apply({"params": params}, tokens, method=model.encode_text)


def patch_scores(model, params, images, class_emb):
    """images [B, H, W, 3] -> cosine scores [B, h, w, C] on the patch grid."""
    out = model.apply({"params": params}, images, method=model.encode_image)
    h, w = out["grid"]
    patches = l2_normalize(out["patch_embed"])
    return (patches @ class_emb.T).reshape(images.shape[0], h, w, -1)


@functools.partial(jax.jit, static_argnums=(0, 4))
def predict(model, params, images, class_emb, bg_thresh=None):
    """images [B, H, W, 3] -> labels [B, H, W] (0 = background when bg_thresh is set)."""
    scores = patch_scores(model, params, images, class_emb)
    b, h, w = images.shape[:3]
    scores = jax.image.resize(scores, (b, h, w, scores.shape[-1]), "linear")
    return jax.vmap(lambda s: protocol.predict_labels(s, bg_thresh))(scores)


def denormalize(images) -> np.ndarray:
    img = np.asarray(images) * np.asarray(protocol.IMAGENET_STD) + np.asarray(protocol.IMAGENET_MEAN)
    return np.clip(img, 0, 255).astype(np.uint8)


def evaluate(model, params, batches, tokenizer, class_names, config, grid_path=None, log=print):
    """mIoU of the pixel unit over `batches` ({image, mask}); label 0 is background.

    Returns dict(miou, iou, table, seconds). Writes a PNG grid when grid_path is set.
    """
    start = time.time()
    templates = protocol.get_templates(config.eval.templates)
    class_emb = class_embeddings(model, params, tokenizer, class_names, templates,
                                 config.input.max_len)
    label_names = ("background",) + tuple(class_names)
    acc = metrics.ConfusionAccumulator(len(label_names))
    shown = {"images": [], "gts": [], "preds": []}
    for batch in batches:
        pred = np.asarray(predict(model, params, jnp.asarray(batch["image"]), class_emb,
                                  config.eval.bg_thresh))
        acc.update(pred, batch["mask"])
        if grid_path and len(shown["images"]) < config.eval.num_examples:
            n = config.eval.num_examples - len(shown["images"])
            shown["images"].extend(denormalize(batch["image"][:n]))
            shown["gts"].extend(batch["mask"][:n])
            shown["preds"].extend(pred[:n])
    result = acc.compute()
    table = metrics.format_table(label_names, result["iou"], result["miou"], result["acc"])
    if grid_path:
        os.makedirs(os.path.dirname(grid_path) or ".", exist_ok=True)
        visualize.save_grid(grid_path, shown["images"], shown["gts"], shown["preds"], label_names)
    return {"miou": float(result["miou"]), "iou": result["iou"], "table": table,
            "label_names": label_names, "seconds": time.time() - start}


def trivial_baselines(batches, num_labels):
    """mIoU of constant per-image guesses that read the ground truth's histogram:
    all background; each image's majority label; each image's majority object label."""
    names = ("all_background", "majority_label_per_image", "majority_object_per_image")
    accs = {n: metrics.ConfusionAccumulator(num_labels) for n in names}
    for batch in batches:
        for gt in batch["mask"]:
            hist = np.bincount(gt[gt != 255].ravel(), minlength=num_labels)[:num_labels]
            guesses = (0, hist.argmax(), hist[1:].argmax() + 1 if hist[1:].any() else 0)
            for name, label in zip(names, guesses):
                accs[name].update(np.full_like(gt, label), gt)
    return {n: float(a.compute()["miou"]) for n, a in accs.items()}
