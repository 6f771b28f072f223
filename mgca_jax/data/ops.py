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

import numpy as np
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


def _crop_window(shape, ex, min_scale, max_scale, min_ratio, max_ratio):
    """(begin, size) of an Inception-style crop of an image of `shape` [H, W, C]: random area
    fraction and aspect, drawn from the example's seed (the same window for the same shape)."""
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), seed=_seed(ex, 1),
        area_range=(min_scale, max_scale), aspect_ratio_range=(min_ratio, max_ratio),
        use_image_if_no_bounding_boxes=True, max_attempts=10)
    return begin, crop_size


@register
def random_resized_crop(ctx, size, min_scale=0.35, max_scale=1.0, min_ratio=3 / 4, max_ratio=4 / 3,
                        antialias=True):
    """Inception-style crop of random area fraction and aspect, resized to size."""
    def op(ex):
        ex = dict(ex)
        begin, crop_size = _crop_window(tf.shape(ex["image"]), ex, min_scale, max_scale,
                                        min_ratio, max_ratio)
        crop = tf.slice(ex["image"], begin, crop_size)
        ex["image"] = tf.image.resize(crop, (size, size), antialias=antialias)
        return ex
    return op


JPEG_SCALES = (8, 4, 2, 1)   # the DCT scalings libjpeg decodes at (1/8 .. 1/1 of the pixels per side)


@register
def decode_random_resized_crop(ctx, size, min_scale=0.35, max_scale=1.0, min_ratio=3 / 4,
                               max_ratio=4 / 3, antialias=True):
    """`decode|random_resized_crop(...)` in one op that decodes only what it needs: the window
    is drawn from the JPEG header's shape (the window `random_resized_crop` draws on the
    decoded image), and `decode_and_crop_jpeg` decodes just it, at the coarsest DCT scaling
    1/r (r in 8, 4, 2, 1) that keeps the window's short side >= size, so the resize still
    shrinks. Non-JPEG bytes are decoded whole, then cropped. Training images only: an example
    with a mask is refused."""
    def from_jpeg(data, ex):
        begin, crop = _crop_window(tf.image.extract_jpeg_shape(data, tf.int32), ex, min_scale,
                                   max_scale, min_ratio, max_ratio)
        short = tf.minimum(crop[0], crop[1])

        def scaled(r):  # the window in the 1/r image, its edges rounded to the nearest pixel
            start = (begin[:2] + r // 2) // r
            stop = tf.maximum((begin[:2] + crop[:2] + r // 2) // r, start + 1)
            window = tf.concat([start, stop - start], 0)
            return lambda: tf.image.decode_and_crop_jpeg(data, window, channels=3, ratio=r)
        fits = tf.stack([short // r >= size for r in JPEG_SCALES] + [True])
        choice = tf.minimum(tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
                            len(JPEG_SCALES) - 1)
        return tf.switch_case(choice, [scaled(r) for r in JPEG_SCALES])

    def from_other(data, ex):
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        begin, crop = _crop_window(tf.shape(image), ex, min_scale, max_scale, min_ratio, max_ratio)
        return tf.slice(image, begin, crop)

    def op(ex):
        if "mask" in ex:
            raise ValueError("decode_random_resized_crop: the example has a 'mask'; use "
                             "'decode|random_resized_crop(...)' (it crops the mask too)")
        ex = dict(ex)
        data = ex["image"]
        crop = tf.cond(tf.io.is_jpeg(data), lambda: from_jpeg(data, ex),
                       lambda: from_other(data, ex))
        ex["image"] = tf.image.resize(tf.ensure_shape(crop, [None, None, 3]), (size, size),
                                      antialias=antialias)
        return ex
    return op


def _coin(ex, salt, prob):
    return tf.random.stateless_uniform([], _seed(ex, salt)) < prob


def _swap_words(text, a, b):
    """Exchanges whole words a and b in a string tensor."""
    text = tf.strings.regex_replace(text, rf"\b{a}\b", "\x00")
    text = tf.strings.regex_replace(text, rf"\b{b}\b", a)
    return tf.strings.regex_replace(text, "\x00", b)


@register
def flip_lr(ctx, key="caption"):
    """Mirrors the image with probability 1/2; a caption, if present, swaps "left" and
    "right" with it, so spatial relations stay true."""
    def op(ex):
        ex = dict(ex)
        flip = _coin(ex, 2, 0.5)
        ex["image"] = tf.cond(flip, lambda: tf.reverse(ex["image"], [1]), lambda: ex["image"])
        if key in ex:
            ex[key] = tf.cond(flip, lambda: _swap_words(ex[key], "left", "right"), lambda: ex[key])
        return ex
    return op


# Colour words that `recolour` removes from a caption (lower case, whole words).
COLOUR_WORDS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "cyan", "white",
                "black", "brown", "grey", "gray", "violet", "magenta", "turquoise", "golden")


@register
def recolour(ctx, prob, key="caption"):
    """With probability `prob`, maps the image's colours through one of the 11
    non-identity transforms made of a channel permutation and an optional inversion
    (red -> green/blue/cyan ..., white <-> black), and deletes every colour word from
    the caption, which then stays true: it names the objects, not their colours.
    Shape, texture and layout are unchanged, so the class words must be learnt from
    them (docs/method.md, "Shape, not colour")."""
    perms = tf.constant([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]], tf.int32)
    words = "|".join(COLOUR_WORDS)

    def transform(image, choice):                       # choice in 1..11
        out = tf.gather(image, perms[choice % 6], axis=-1)
        return tf.where(choice >= 6, tf.cast(255, image.dtype) - out, out)

    def strip_colours(text):
        # "an orange circle" -> "a circle", "a red apple" -> "an apple", "two green squares" -> "two squares"
        text = tf.strings.regex_replace(text, rf"\b([aA])n ((?:{words}) )+([^aeiouAEIOU])", "\\1 \\3")
        text = tf.strings.regex_replace(text, rf"\b([aA]) ((?:{words}) )+([aeiouAEIOU])", "\\1n \\3")
        text = tf.strings.regex_replace(text, rf"\b(?:{words})\b ?", "")
        return tf.strings.strip(text)

    def op(ex):
        ex = dict(ex)
        apply = _coin(ex, 3, prob)
        choice = tf.random.stateless_uniform([], _seed(ex, 4), 1, 12, dtype=tf.int32)
        ex["image"] = tf.cond(apply, lambda: transform(ex["image"], choice), lambda: ex["image"])
        if key in ex:
            ex[key] = tf.cond(apply, lambda: strip_colours(ex[key]), lambda: ex[key])
        return ex
    return op


@register
def normalize(ctx):
    """uint8/float RGB in [0, 255] -> float32 standardised with ImageNet statistics."""
    # (x - mean) / std as one pass: [pixels, 3] @ diag(1 / std) + (-mean / std). On one CPU
    # core this is ~3x faster than the two broadcasting ops (docs/results.md, "Cheaper host paths").
    scale = tf.linalg.diag(tf.constant(1.0 / np.asarray(IMAGENET_STD), tf.float32))
    offset = tf.constant(-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD), tf.float32)

    def op(ex):
        ex = dict(ex)
        image = tf.cast(ex["image"], tf.float32)
        pixels = tf.nn.bias_add(tf.matmul(tf.reshape(image, [-1, 3]), scale), offset)
        ex["image"] = tf.ensure_shape(tf.reshape(pixels, tf.shape(image)), image.shape)
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
