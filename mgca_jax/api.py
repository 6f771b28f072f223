"""A trained model for downstream JAX code: `mgca_jax.load(EXPORT_DIR)`.

  model = mgca_jax.load("exports/demo")
  emb = model.encode_text(["a photo of a circle."])              # [1, E]
  labels = model.segment(images, ["circle", "square"])           # list of [H, W] int32

EXPORT_DIR is what `python -m mgca_jax.export` writes (FILES below). Loading
verifies the SHA-256 sums, the format version, and every parameter key and
shape against the model the config builds; each failure is an `ExportError`
with a one-line message naming the file or key. Nothing here imports
TensorFlow: the tokenizer is read with `sentencepiece`, the parameters with
`safetensors.numpy` (no pickle).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

FORMAT = "mgca_jax.export"
FORMAT_VERSION = 1
PARAMS, CONFIG, TOKENIZER, CARD, SUMS = (
    "params.safetensors", "config.json", "tokenizer.model", "README.md", "SHA256SUMS")
FILES = (PARAMS, CONFIG, TOKENIZER, CARD)       # covered by SHA256SUMS
WINDOW_SCORER = "window_scorer.jax"             # optional (`export --jax_export`), also summed


class ExportError(ValueError):
    """A missing, tampered or mismatched export (one-line message naming the file or key)."""


# --------------------------------------------------------------------------- format helpers

def flatten(params) -> dict[str, np.ndarray]:
    """Nested dict of arrays (or ShapeDtypeStructs) -> {"a/b/c": leaf}."""
    return {"/".join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return tree


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sums(directory: str) -> dict[str, str]:
    path = os.path.join(directory, SUMS)
    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing (not an mgca_jax export?)")
    sums = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or len(parts[0]) != 64:
                raise ExportError(f"{path}: line {n} is not '<sha256>  <file>'")
            sums[parts[1]] = parts[0]
    return sums


def verify(directory: str) -> None:
    """Checksums of every file of FILES, each present and unmodified."""
    if not os.path.isdir(directory):
        raise ExportError(f"{directory}: export directory does not exist")
    sums = read_sums(directory)
    for name in FILES:
        path = os.path.join(directory, name)
        if name not in sums:
            raise ExportError(f"{os.path.join(directory, SUMS)}: no checksum for {name}")
        if not os.path.isfile(path):
            raise ExportError(f"{path}: missing")
        if sha256(path) != sums[name]:
            raise ExportError(f"{path}: SHA-256 does not match {SUMS} (file modified or corrupt)")


def load_window_scorer(directory: str):
    """The `jax.export.Exported` per-window scorer of `export --jax_export`, checksum verified:
    `.call(params, crops, class_emb)`, crops [n, crop, crop, 3] normalised float32 at the
    crop of config.json's "jax_export", class_emb [C, E] -> scores [3, n, h, w, C] (units
    pixel, group, adaptive; n and C are free)."""
    from jax import export
    path = os.path.join(directory, WINDOW_SCORER)
    if not os.path.isfile(path):
        raise ExportError(f"{path}: missing (export with --jax_export)")
    want = read_sums(directory).get(WINDOW_SCORER)
    if want is None or sha256(path) != want:
        raise ExportError(f"{path}: SHA-256 does not match {SUMS} (file modified or corrupt)")
    with open(path, "rb") as f:
        try:
            return export.deserialize(bytearray(f.read()))
        except Exception as e:          # jax raises several kinds for a foreign or expired artifact
            raise ExportError(f"{path}: cannot deserialize ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read ({type(e).__name__})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                          f"this mgca_jax reads {FORMAT!r} version {FORMAT_VERSION}")
    for key in ("model", "preprocessing", "prompts", "protocol", "provenance"):
        if key not in meta:
            raise ExportError(f"{path}: key {key!r} missing")
    return meta


def model_config(meta: dict) -> ml_collections.ConfigDict:
    """The subset of the training config that `make_model` and `abstract_params` read."""
    pre = meta["preprocessing"]
    return ml_collections.ConfigDict({"model": meta["model"], "input": {
        "image_size": pre["image_size"], "max_len": pre["max_len"]}})


def read_params(directory: str, model, config) -> dict:
    """The params of PARAMS, checked key by key and shape by shape against `model`."""
    from safetensors import SafetensorError, safe_open

    from mgca_jax.checkpoints import abstract_params
    path = os.path.join(directory, PARAMS)
    try:
        with safe_open(path, framework="numpy") as f:        # one read: tensors and metadata
            version = (f.metadata() or {}).get("format_version")
            flat = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as e:
        raise ExportError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if version != str(FORMAT_VERSION):
        raise ExportError(f"{path}: metadata format_version {version!r}, expected '{FORMAT_VERSION}'")
    want = flatten(abstract_params(model, config))
    for key, spec in want.items():
        if key not in flat:
            raise ExportError(f"{path}: parameter {key!r} missing")
        if tuple(flat[key].shape) != tuple(spec.shape) or flat[key].dtype != spec.dtype:
            raise ExportError(f"{path}: parameter {key!r} is {flat[key].dtype}{list(flat[key].shape)}, "
                              f"the config builds {spec.dtype}{list(spec.shape)}")
    extra = sorted(set(flat) - set(want))
    if extra:
        raise ExportError(f"{path}: unexpected parameter {extra[0]!r}")
    return unflatten(flat)


# --------------------------------------------------------------------------- the model

class Model:
    """Encode and segment functions of one exported model.

    Embeddings are the raw joint-space vectors unless `normalize=True`; cosine
    similarity is their normalised dot product. `params` and `apply` are the
    pure pieces for use inside your own `jit`, `grad` and `vmap`.
    """

    def __init__(self, directory: str, meta: dict, params: dict, tokenizer):
        from mgca_jax.models.two_tower import make_model
        self.directory, self.meta, self.params, self.tokenizer = directory, meta, params, tokenizer
        self.config = model_config(meta)
        self.module = make_model(self.config)
        pre = meta["preprocessing"]
        self.image_size, self.max_len, self.patch = pre["image_size"], pre["max_len"], pre["patch_size"]
        self.mean = np.asarray(pre["mean"], np.float32)
        self.std = np.asarray(pre["std"], np.float32)

    # -- pure pieces
    def apply(self, params, images=None, tokens=None) -> dict:
        """Pure: normalised images [B, S, S, 3] and/or tokens [n, L] -> the towers' outputs
        (patch_embed [B, N, E], image_embed [B, E], text_embed [n, E], token_embed [n, L, E])."""
        out = {}
        if images is not None:
            o = self.module.apply({"params": params}, images, method=self.module.encode_image)
            out.update(patch_embed=o["patch_embed"], image_embed=o["image_embed"])
        if tokens is not None:
            o = self.module.apply({"params": params}, tokens, method=self.module.encode_text)
            out.update(text_embed=o["text_embed"], token_embed=o["token_embed"])
        return out

    def preprocess(self, images) -> jnp.ndarray:
        """uint8 (or 0..255 float) RGB images of any sizes, a list or a [B, H, W, 3] array ->
        float32 [B, S, S, 3] at the training size, normalised with the training statistics."""
        if isinstance(images, np.ndarray | jax.Array) and np.ndim(images) == 3:
            images = [images]
        out = []
        for i, img in enumerate(images):
            x = jnp.asarray(img, jnp.float32)
            if x.ndim != 3 or x.shape[-1] != 3:
                raise ValueError(f"image {i}: expected (H, W, 3) RGB, got shape {tuple(x.shape)}")
            if x.shape[:2] != (self.image_size, self.image_size):
                x = jax.image.resize(x, (self.image_size, self.image_size, 3), "linear", antialias=True)
            out.append((x - self.mean) / self.std)
        return jnp.stack(out)

    def tokenize(self, texts: Sequence[str]) -> jnp.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        return jnp.asarray([self.tokenizer.encode(t, self.max_len) for t in texts], jnp.int32)

    # -- convenience
    def encode_image(self, images, normalize: bool = False) -> jnp.ndarray:
        """[B, E]: the mean of the patch embeddings."""
        e = _jitted_apply(self)(self.params, self.preprocess(images), None)["image_embed"]
        return _maybe_normalize(e, normalize)

    def patch_embeddings(self, images, normalize: bool = False) -> jnp.ndarray:
        """[B, h, w, E] on the patch grid of the training size."""
        x = self.preprocess(images)
        e = _jitted_apply(self)(self.params, x, None)["patch_embed"]
        h = w = self.image_size // self.patch
        return _maybe_normalize(e.reshape(x.shape[0], h, w, -1), normalize)

    def encode_text(self, texts: Sequence[str], normalize: bool = False) -> jnp.ndarray:
        e = _jitted_apply(self)(self.params, None, self.tokenize(texts))["text_embed"]
        return _maybe_normalize(e, normalize)

    def class_embeddings(self, names: Sequence[str], templates=None) -> jnp.ndarray:
        """[C, E], normalised: per class, the mean of its normalised prompt embeddings,
        renormalised (templates: a set name or a list of '{}' strings; default: the run's)."""
        from mgca_jax.evaluation import protocol, zeroshot
        templates = templates or self.meta["prompts"]["templates"]
        if isinstance(templates, str):
            templates = protocol.get_templates(templates)
        return zeroshot.class_embeddings(self.module, self.params, self.tokenizer, list(names),
                                         tuple(templates), self.max_len)

    def segmenter(self, classes: Sequence[str], unit: str = "adaptive", bg_thresh="default",
                  templates=None, **protocol_overrides):
        """The `inference.Segmenter` that `segment` uses (label 0 = background when
        bg_thresh is not None; the default is the run's)."""
        from mgca_jax import inference
        bg = self.meta["prompts"]["bg_thresh"] if bg_thresh == "default" else bg_thresh
        pcfg = inference.ProtocolConfig(**{**self.meta["protocol"], **protocol_overrides})
        from mgca_jax.evaluation import protocol
        templates = templates or self.meta["prompts"]["templates"]
        if isinstance(templates, str):
            templates = protocol.get_templates(templates)
        return inference.make_segmenter(self.module, self.params, self.tokenizer, list(classes),
                                        tuple(templates), self.max_len, units=(unit,),
                                        protocol_config=pcfg, bg_thresh=bg)

    def segment(self, images, classes: Sequence[str], unit: str = "adaptive", bg_thresh="default",
                templates=None, **protocol_overrides) -> list[np.ndarray]:
        """Per image, [H, W] int32 labels at the image's size: 0 = background and c + 1 =
        classes[c] when bg_thresh is set (the default), else c = classes[c]."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        seg = self.segmenter(classes, unit, bg_thresh, templates, **protocol_overrides)
        return [labels[0] for labels in seg.segment(list(images))]


def _maybe_normalize(x, normalize: bool):
    if not normalize:
        return x
    from mgca_jax.losses import l2_normalize
    return l2_normalize(x)


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: Model):
    return jax.jit(model.apply)


def load(directory: str) -> Model:
    """Verifies and loads an export written by `python -m mgca_jax.export`."""
    from mgca_jax.data.tokenizer import Tokenizer
    from mgca_jax.models.two_tower import make_model
    verify(directory)
    meta = read_config(directory)
    config = model_config(meta)
    params = read_params(directory, make_model(config), config)
    tokenizer = Tokenizer(os.path.join(directory, TOKENIZER))
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ExportError(f"{os.path.join(directory, TOKENIZER)}: {tokenizer.vocab_size} pieces, "
                          f"the model has a vocabulary of {config.model.vocab_size}")
    return Model(directory, meta, params, tokenizer)
