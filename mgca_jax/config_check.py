"""Config validation that runs before TensorFlow is imported or anything is written."""
import math
import os

from mgca_jax import inference, losses
from mgca_jax.models import text as text_models
from mgca_jax.models import vit


class ConfigError(ValueError):
    """Bad configuration; the message is one line that names the field."""


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


DATA_SETS = ("mgca_scenes", "cc3m")  # what the input pipeline reads


def check_config(config, num_devices: int) -> None:
    """Raises ConfigError before anything is read or written."""
    if config.get("nonfinite", "stop") not in ("stop", "skip_step"):
        raise ConfigError(f"config.nonfinite: unknown mode {config.nonfinite!r}; "
                          "use 'stop' or 'skip_step'")
    if config.data.name not in DATA_SETS:
        raise ConfigError(f"config.data.name: unknown data set {config.data.name!r}; "
                          f"use one of {', '.join(DATA_SETS)}")
    if "://" in str(config.data_dir):
        raise ConfigError(f"config.data_dir: {config.data_dir} is a URL; only paths are "
                          "supported, so mount it (e.g. with gcsfuse) at the same path on every host")
    tokenizer = config.input.get("tokenizer", "")
    if tokenizer:
        from mgca_jax.data.tokenizer import Tokenizer, TokenizerError
        if not os.path.isfile(tokenizer):
            raise ConfigError(f"config.input.tokenizer: file {tokenizer} does not exist")
        try:
            Tokenizer(tokenizer)
        except TokenizerError as e:
            raise ConfigError(f"config.input.tokenizer: {e}") from None
    if config.data_dir and not os.path.isdir(config.data_dir):
        raise ConfigError(f"config.data_dir: directory {config.data_dir} does not exist")
    for field, parse in (("image_variant", vit.parse_variant),
                         ("text_variant", text_models.parse_text_variant)):
        try:
            parse(config.model[field])
        except vit.UnknownVariantError as e:
            raise ConfigError(f"config.model.{field}: {e}") from None
    if config.model.get("image_stem", "patch") not in vit.STEMS:
        raise ConfigError(f"config.model.image_stem: unknown stem {config.model.image_stem!r}; "
                          f"use one of {', '.join(vit.STEMS)}")
    radius = str(config.model.get("attention_radius", ""))
    if radius:
        try:
            vit.parse_radii(radius, vit.parse_variant(config.model.image_variant)["depth"])
        except vit.UnknownVariantError as e:
            raise ConfigError(f"config.model.attention_radius: {e}") from None
    for field in ("lr", "weight_decay", "grad_clip", "b2"):
        if not _is_number(config[field]) or config[field] < 0:
            raise ConfigError(f"config.{field}: expected a non-negative number, got {config[field]!r}")
    for field in ("batch_size", "total_steps"):
        if not isinstance(config[field], int) or config[field] <= 0:
            raise ConfigError(f"config.{field}: expected a positive integer, got {config[field]!r}")
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size: global batch {config.batch_size} does not divide "
                          f"evenly over {num_devices} devices")
    if config.sharding.params not in ("replicated", "fsdp"):
        raise ConfigError(f"config.sharding.params: unknown mode {config.sharding.params!r}; "
                          "use 'replicated' or 'fsdp'")
    try:
        losses.active_terms(config.loss)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    loss = config.loss
    if loss.get("image_text_pool", "mean") not in ("mean", "topk"):
        raise ConfigError(f"config.loss.image_text_pool: unknown pooling {loss.image_text_pool!r}; "
                          "use 'mean' or 'topk'")
    if loss.get("object_query", "own") not in ("own", "candidate"):
        raise ConfigError(f"config.loss.object_query: unknown {loss.object_query!r}; "
                          "use 'own' or 'candidate'")
    for field in ("image_text_topk", "background_fraction", "pixel_top_fraction", "presence_topk"):
        v = loss.get(field, 0.5)
        if not _is_number(v) or not 0 < v <= 1:
            raise ConfigError(f"config.loss.{field}: expected a fraction in (0, 1], got {v!r}")
    scale = inference.config_test_scale(config)
    if not _is_number(scale) or scale <= 0:
        raise ConfigError(f"config.eval.test_scale: expected a positive number, got {scale!r}")
    check_shapes(config)
    check_vocab(config, _explicit_tokenizer_size(config))


def check_shapes(config) -> None:
    """Sizes the model would otherwise accept silently (or fail on with a trace)."""
    i = config.input
    for field in ("image_size", "max_len", "object_max_len", "num_objects"):
        if not isinstance(i[field], int) or isinstance(i[field], bool) or i[field] <= 0:
            raise ConfigError(f"config.input.{field}: expected a positive integer, got {i[field]!r}")
    # The text tower has max_len positions; object prompts go through the same tower.
    if i.object_max_len > i.max_len:
        raise ConfigError(f"config.input.object_max_len: {i.object_max_len} exceeds "
                          f"config.input.max_len ({i.max_len}), the text tower's positions")
    patch = vit.parse_variant(config.model.image_variant)["patch"]
    stem = config.model.get("image_stem", "patch")
    if stem in ("conv", "hmlp") and patch & (patch - 1):
        raise ConfigError(f"config.model.image_variant: the {stem} stem needs a power-of-two patch, "
                          f"got {patch}")
    # A patch stem drops the pixels past the last whole patch; the masks would not line up.
    if i.image_size % patch:
        raise ConfigError(f"config.input.image_size: {i.image_size} is not a multiple of the "
                          f"patch size {patch} ({config.model.image_variant})")


def _explicit_tokenizer_size(config):
    """Pieces of config.input.tokenizer when it names an existing file, else None."""
    path = config.input.tokenizer
    if not path or not os.path.isfile(path):
        return None
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=path).get_piece_size()


def check_vocab(config, tokenizer_size=None) -> None:
    """The embedding table must cover every token id, or ids past it embed as NaN.

    `tokenizer_size`: the loaded tokenizer's pieces; None before it is known, when a
    tokenizer trained on the fly has at most config.input.vocab_size pieces.
    """
    v = config.model.vocab_size
    if not isinstance(v, int) or isinstance(v, bool) or (v <= 0 and v != -1):
        raise ConfigError(f"config.model.vocab_size: expected -1 (the tokenizer's) or a positive "
                          f"integer, got {v!r}")
    if v == -1:
        return
    if tokenizer_size is not None:
        need, what = tokenizer_size, f"the tokenizer's {tokenizer_size} pieces"
    elif not config.input.tokenizer:
        need = config.input.vocab_size
        what = f"config.input.vocab_size ({need}), the size of the tokenizer trained for the run"
    else:
        return
    if v < need:
        raise ConfigError(f"config.model.vocab_size: {v} is smaller than {what}, so larger token "
                          f"ids would embed as NaN; use -1 (the tokenizer's) or at least {need}")


def config_warnings(config) -> list[str]:
    """Values that run but are probably not meant (one line each)."""
    out = []
    if config.warmup_steps > config.total_steps:
        out.append(f"config.warmup_steps: {config.warmup_steps} is more than config.total_steps "
                   f"{config.total_steps}; the warm-up is cut to {config.total_steps - 1} steps, so the "
                   "learning rate peaks at the last step")
    return out
