"""Preprocessing as small composable ops, chained by a spec string.

  "resize(64)|flip_lr|normalize|tokenize(32)|object_words(4)|object_prompts(8)|keep('image','tokens')"

Each op is `fn(example: dict) -> dict` on single (unbatched) examples in a
tf.data graph. Random ops are stateless: they draw from `example["_seed"]`
(int64 [2], set per element by the input pipeline), so a pipeline gives the
same output whatever its parallelism, and resuming at a step is exact.
Ops that need the tokenizer or lexicon get them from a `Context`.
"""
import ast
import dataclasses
from typing import Any, Callable, Optional

import tensorflow as tf

from mgca_jax.evaluation.protocol import IMAGENET_MEAN, IMAGENET_STD

OPS: dict[str, Callable] = {}


@dataclasses.dataclass
class Context:
    tokenizer: Any = None          # mgca_jax.data.tokenizer.Tokenizer
    lexicon: Any = None            # mgca_jax.data.lexicon.Lexicon
    extractor: Optional[Callable] = None
    object_template: str = "a photo of a {}."


def register(fn):
    OPS[fn.__name__] = fn
    return fn


def _seed(example, salt: int):
    return tf.random.experimental.stateless_fold_in(example["_seed"], salt)


@register
def decode(ctx):
    """Encoded image (and mask) bytes -> uint8 tensors [H, W, 3] ([H, W, 1])."""
    def op(ex):
        ex = dict(ex)
        ex["image"] = tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
        if "mask" in ex:
            ex["mask"] = tf.io.decode_image(ex["mask"], channels=1, expand_animations=False)
        return ex
    return op


@register
def resize(ctx, size):
    """Image to size x size (bilinear); a mask, if present, with nearest."""
    def op(ex):
        ex = dict(ex)
        ex["image"] = tf.image.resize(ex["image"], (size, size), antialias=True)
        if "mask" in ex:
            ex["mask"] = tf.image.resize(ex["mask"], (size, size), method="nearest")
        return ex
    return op


@register
def random_resized_crop(ctx, size, min_scale=0.35, max_scale=1.0, min_ratio=3 / 4, max_ratio=4 / 3):
    """Inception-style crop of random area fraction and aspect, resized to size."""
    def op(ex):
        ex = dict(ex)
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(ex["image"]), tf.zeros([0, 0, 4], tf.float32), seed=_seed(ex, 1),
            area_range=(min_scale, max_scale), aspect_ratio_range=(min_ratio, max_ratio),
            use_image_if_no_bounding_boxes=True, max_attempts=10)
        crop = tf.slice(ex["image"], begin, crop_size)
        ex["image"] = tf.image.resize(crop, (size, size), antialias=True)
        return ex
    return op


@register
def flip_lr(ctx):
    def op(ex):
        ex = dict(ex)
        ex["image"] = tf.image.stateless_random_flip_left_right(ex["image"], _seed(ex, 2))
        return ex
    return op


@register
def normalize(ctx):
    """uint8/float RGB in [0, 255] -> float32 standardised with ImageNet statistics."""
    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)

    def op(ex):
        ex = dict(ex)
        ex["image"] = (tf.cast(ex["image"], tf.float32) - mean) / std
        return ex
    return op


@register
def squeeze_mask(ctx):
    """mask [H, W, 1] -> int32 [H, W] (evaluation only)."""
    def op(ex):
        ex = dict(ex)
        ex["mask"] = tf.cast(ex["mask"][..., 0], tf.int32)
        return ex
    return op


@register
def tokenize(ctx, max_len, key="caption", out="tokens"):
    def op(ex):
        ex = dict(ex)
        ex[out] = ctx.tokenizer.tf_tokenize(ex[key], max_len)
        return ex
    return op


@register
def object_words(ctx, k, key="caption"):
    """Up to k object-word ids (-1 padded) and their validity mask."""
    def op(ex):
        ex = dict(ex)
        ids = ctx.extractor(ex[key])[:k]
        ids = tf.pad(ids, [[0, k - tf.shape(ids)[0]]], constant_values=-1)
        ex["object_ids"] = tf.ensure_shape(ids, [k])
        ex["object_mask"] = ids >= 0
        return ex
    return op


@register
def object_prompts(ctx, max_len):
    """object_ids [k] -> object_tokens [k, max_len]: each word in the prompt template."""
    prompts = [ctx.object_template.format(w) for w in ctx.lexicon.words]
    table = tf.constant(ctx.tokenizer.tf_tokenize(tf.constant(prompts), max_len).numpy())

    def op(ex):
        ex = dict(ex)
        tokens = tf.gather(table, tf.maximum(ex["object_ids"], 0))
        ex["object_tokens"] = tf.where(ex["object_mask"][:, None], tokens, 0)
        return ex
    return op


@register
def keep(ctx, *keys):
    def op(ex):
        return {k: ex[k] for k in keys}
    return op


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
    """"a(1)|b|c(x=2)" -> [("a", (1,), {}), ("b", (), {}), ("c", (), {"x": 2})]."""
    steps = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        try:
            call = ast.parse(part if "(" in part else part + "()", mode="eval").body
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
                raise SyntaxError
            args = tuple(ast.literal_eval(a) for a in call.args)
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError):
            raise ValueError(f"preprocessing spec: cannot parse op {part!r}") from None
        if call.func.id not in OPS:
            raise ValueError(f"preprocessing spec: unknown op {call.func.id!r}; known: {sorted(OPS)}")
        steps.append((call.func.id, args, kwargs))
    return steps


def build(spec: str, ctx: Context) -> Callable:
    """Composes the ops of `spec` into one example -> example function."""
    fns = [OPS[name](ctx, *args, **kwargs) for name, args, kwargs in parse(spec)]

    def preprocess(ex):
        for fn in fns:
            ex = fn(ex)
        return ex
    return preprocess
