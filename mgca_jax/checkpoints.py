"""Reading what the trainer writes, for inference tools.

  WORKDIR/config.json                  the config dict (train.py)
  WORKDIR/checkpoints/STEP/default     orbax state {"step", "params", "opt_state"}

Only the params are restored (orbax partial restore into the model's abstract
params; no pickle). The tokenizer is `config.input.tokenizer` or the one the
input pipeline cached as `spm_{vocab_size}.model` in the data set's directory.
Every failure is a `CheckpointError` whose message is one line naming the path.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mgca_jax.models.two_tower import TwoTower, make_model

EMBEDDED = "mgca_scenes"   # input_pipeline.EMBEDDED (not imported: that pulls in TensorFlow)


class CheckpointError(ValueError):
    """A missing or unreadable checkpoint, config or tokenizer (one-line message)."""


@dataclasses.dataclass
class Loaded:
    config: ml_collections.ConfigDict
    model: TwoTower
    params: dict
    step: int
    path: str                       # the step directory restored


def step_dirs(checkpoints_dir: str) -> dict[int, str]:
    """Complete checkpoints: orbax renames a step's temporary directory to the bare
    step number only once it is fully written."""
    if not os.path.isdir(checkpoints_dir):
        return {}
    return {int(d): os.path.join(checkpoints_dir, d) for d in os.listdir(checkpoints_dir)
            if d.isdigit() and os.path.isdir(os.path.join(checkpoints_dir, d))}


def resolve(workdir: str | None = None, checkpoint: str | None = None) -> tuple[str, str, int]:
    """(config.json path, step directory, step) from --workdir (latest step) or
    --checkpoint=WORKDIR/checkpoints/STEP."""
    if bool(workdir) == bool(checkpoint):
        raise CheckpointError("pass exactly one of --workdir=DIR and --checkpoint=DIR/checkpoints/STEP")
    if workdir:
        if not os.path.isdir(workdir):
            raise CheckpointError(f"--workdir: directory {workdir} does not exist")
        ckpt_dir = os.path.join(workdir, "checkpoints")
        steps = step_dirs(ckpt_dir)
        if not steps:
            raise CheckpointError(f"--workdir: expected a complete checkpoint under {ckpt_dir} (none found)")
        step = max(steps)
        step_dir = steps[step]
    else:
        step_dir = os.path.normpath(checkpoint)
        name = os.path.basename(step_dir)
        if not os.path.isdir(step_dir):
            raise CheckpointError(f"--checkpoint: directory {step_dir} does not exist")
        if not name.isdigit():
            raise CheckpointError(f"--checkpoint: expected a step directory DIR/checkpoints/STEP, got {step_dir}")
        step, workdir = int(name), os.path.dirname(os.path.dirname(step_dir))
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"expected the run's config at {config_path} (missing)")
    return config_path, step_dir, step


def load_config(path: str) -> ml_collections.ConfigDict:
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read config {path} ({type(e).__name__}: {e})".replace("\n", " ")) from None


def abstract_params(model: TwoTower, config) -> dict:
    """Shapes and dtypes of the model's params (no memory, no compute)."""
    s, length = config.input.image_size, config.input.max_len
    batch = {"image": jnp.zeros((1, s, s, 3), jnp.float32), "tokens": jnp.ones((1, length), jnp.int32)}
    return jax.eval_shape(lambda: model.init(jax.random.key(0), batch, with_objects=False)["params"])


def restore_params(step_dir: str, model: TwoTower, config) -> dict:
    """The params of the checkpoint in `step_dir`, as host numpy arrays."""
    import orbax.checkpoint as ocp
    item_dir = os.path.join(os.path.abspath(step_dir), "default")   # orbax needs absolute paths
    if not os.path.isdir(item_dir):
        raise CheckpointError(f"expected checkpoint data at {item_dir} (missing)")
    target = {"params": abstract_params(model, config)}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            out = ckptr.restore(item_dir, args=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True))
    except Exception as e:  # orbax raises many types; report one line naming the path
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot restore params from {item_dir} ({type(e).__name__}: {msg})") from None
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(target["params"]),
                                 jax.tree.leaves(out["params"])):
        if tuple(want.shape) != tuple(np.shape(got)):
            raise CheckpointError(
                f"{item_dir}: param {jax.tree_util.keystr(path)} has shape {tuple(np.shape(got))}, "
                f"the config in config.json builds {tuple(want.shape)}")
    return out["params"]


def load(workdir: str | None = None, checkpoint: str | None = None) -> Loaded:
    config_path, step_dir, step = resolve(workdir, checkpoint)
    config = load_config(config_path)
    if config.model.vocab_size <= 0:
        raise CheckpointError(f"{config_path}: model.vocab_size is {config.model.vocab_size}, "
                              "expected the resolved tokenizer size")
    model = make_model(config)
    return Loaded(config, model, restore_params(step_dir, model, config), step, step_dir)


def load_for_tools(workdir=None, checkpoint=None, export=None, tokenizer=None):
    """(Loaded, tokenizer) from exactly one of --workdir, --checkpoint and --export; an
    export brings its own tokenizer. Raises CheckpointError (one line)."""
    if sum(map(bool, (workdir, checkpoint, export))) != 1:
        raise CheckpointError("pass exactly one of --workdir=DIR, --checkpoint=DIR/checkpoints/STEP "
                              "and --export=EXPORT_DIR")
    if not export:
        loaded = load(workdir, checkpoint)
        return loaded, load_tokenizer(loaded.config, tokenizer)
    if tokenizer:
        raise CheckpointError("--tokenizer: an export carries its own tokenizer.model; drop the flag")
    from mgca_jax import api
    try:
        m = api.load(export)
    except api.ExportError as e:
        raise CheckpointError(f"--export: {e}") from None
    config = ml_collections.ConfigDict(m.meta["provenance"]["train_config"])
    return Loaded(config, m.module, m.params, int(m.meta["provenance"]["step"]), export), m.tokenizer


def export_config(export: str) -> ml_collections.ConfigDict:
    """The training config inside an export (checksums and format checked)."""
    from mgca_jax import api
    try:
        api.verify(export)
        return ml_collections.ConfigDict(api.read_config(export)["provenance"]["train_config"])
    except api.ExportError as e:
        raise CheckpointError(f"--export: {e}") from None


def tokenizer_path(config, override: str | None = None) -> str:
    """--tokenizer, else config.input.tokenizer, else the input pipeline's cached model."""
    if override:
        path, source = override, "--tokenizer"
    elif config.input.tokenizer:
        path, source = config.input.tokenizer, "config.input.tokenizer"
    else:
        path, source = os.path.join(_dataset_dir(config), f"spm_{config.input.vocab_size}.model"), \
            "cached tokenizer"
    if not os.path.isfile(path):
        raise CheckpointError(f"{source}: tokenizer file {path} does not exist (pass --tokenizer=PATH)")
    return path


def load_tokenizer(config, override: str | None = None):
    from mgca_jax.data.tokenizer import Tokenizer
    from mgca_jax.data.tokenizer import TokenizerError
    path = tokenizer_path(config, override)
    try:
        tok = Tokenizer(path)
    except TokenizerError as e:
        raise CheckpointError(f"{'--tokenizer' if override else 'tokenizer'}: {e}") from None
    if tok.vocab_size != config.model.vocab_size:
        raise CheckpointError(f"tokenizer {tok.model_path} has {tok.vocab_size} pieces, the model "
                              f"was trained with {config.model.vocab_size}")
    return tok


def _dataset_dir(config) -> str:
    """Versioned directory of the training data set (where the tokenizer is cached)."""
    data_dir = config.data_dir or os.path.abspath("data")
    from mgca_jax.quiet import import_tensorflow
    import_tensorflow()
    if config.data.name == EMBEDDED:
        from mgca_jax.data import scenes_builder
        return str(scenes_builder.MgcaScenes(config=config.data.config_name, data_dir=data_dir).data_dir)
    from mgca_jax.data import cc3m_builder
    return str(cc3m_builder.Cc3m(config=config.data.config_name, data_dir=data_dir).data_dir)
