"""Zero-shot evaluation: prompt-ensemble class embeddings, and the mIoU of a predict function.

Class names -> prompt ensemble -> one normalised text embedding per class
(`class_embeddings`). `evaluate` receives a predict function (uint8 images ->
label maps), never a model: the trainer, `python -m mgca_jax.evaluate` and
`mgca_jax.load` build theirs with `inference.make_segmenter`, the one
inference path. `patch_scores` (raw cosines on the patch grid) is kept for
diagnostics.
"""
import functools
import os
import time

import jax
import numpy as np

from mgca_jax.evaluation import metrics
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
    """Normalised images [B, H, W, 3] -> cosine scores [B, h, w, C] on the patch grid."""
    out = model.apply({"params": params}, images, method=model.encode_image)
    h, w = out["grid"]
    patches = l2_normalize(out["patch_embed"])
    return (patches @ class_emb.T).reshape(images.shape[0], h, w, -1)


def evaluate(predict_fn, batches, label_names, grid_path=None, num_examples=8):
    """mIoU of `predict_fn` (uint8 images [B, H, W, 3] -> B label maps [H, W]) over
    `batches` ({image: uint8, mask}); label i is label_names[i].

    Returns dict(miou, iou, acc, table, label_names, seconds). Writes a PNG grid of
    the first `num_examples` images when grid_path is set.
    """
    start = time.time()
    label_names = tuple(label_names)
    acc = metrics.ConfusionAccumulator(len(label_names))
    shown = {"images": [], "gts": [], "preds": []}
    for batch in batches:
        images = np.asarray(batch["image"])
        if images.dtype != np.uint8:
            raise ValueError(f"evaluate: expected uint8 images, got {images.dtype} "
                             "(drop `normalize` from the eval preprocessing)")
        preds = [np.asarray(p) for p in predict_fn(images)]
        for pred, gt in zip(preds, batch["mask"]):
            acc.update(pred, gt)
        if grid_path and len(shown["images"]) < num_examples:
            n = num_examples - len(shown["images"])
            shown["images"].extend(images[:n])
            shown["gts"].extend(batch["mask"][:n])
            shown["preds"].extend(preds[:n])
    result = acc.compute()
    table = metrics.format_table(label_names, result["iou"], result["miou"], result["acc"])
    if grid_path:
        from mgca_jax.evaluation import visualize
        os.makedirs(os.path.dirname(grid_path) or ".", exist_ok=True)
        visualize.save_grid(grid_path, shown["images"], shown["gts"], shown["preds"], label_names)
    return {"miou": float(result["miou"]), "iou": result["iou"], "acc": float(result["acc"]),
            "table": table, "label_names": label_names, "seconds": time.time() - start}


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
