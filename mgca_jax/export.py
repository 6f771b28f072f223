"""Export a trained checkpoint for downstream JAX code: one self-describing, pickle-free directory.

  python -m mgca_jax.export --workdir=DIR [--checkpoint=DIR/checkpoints/STEP] --out=EXPORT_DIR [--overwrite] [--jax_export]

EXPORT_DIR holds params.safetensors (flat "/"-joined keys, no optimizer state),
config.json (model, preprocessing, prompts, inference protocol, provenance,
evaluation results), tokenizer.model, a README.md model card and SHA256SUMS.
--jax_export adds window_scorer.jax, a `jax.export` serialization of the
per-window scorer at the default crop (`api.load_window_scorer`; compatibility
window in config.json). It is written under a temporary name next to --out and renamed when complete;
a non-empty --out is refused unless --overwrite is given. Load it with
`mgca_jax.load(EXPORT_DIR)` (mgca_jax/api.py). Bad input ends with a one-line
error naming the flag or file, exit status 2, nothing written.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from mgca_jax import api, checkpoints, cli_utils
from mgca_jax.cli_utils import fail


def source_version() -> str | None:
    """The git commit of this source tree when it is a checkout (with '+dirty' when modified)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def dataset_sizes(config) -> dict:
    """Examples per split of the training data set, read from TFDS's dataset_info.json."""
    try:
        info_path = os.path.join(checkpoints._dataset_dir(config), "dataset_info.json")
        with open(info_path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return {}
    return {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}


def evaluation_results(workdir: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, "eval_step*.json"))
                       + glob.glob(os.path.join(workdir, "inference_*.json"))):
        try:
            with open(path) as f:
                out[os.path.basename(path)] = json.load(f)
        except (OSError, ValueError):
            continue
    return out


def export_config(loaded: checkpoints.Loaded, workdir: str) -> dict:
    from mgca_jax import inference
    from mgca_jax.evaluation import protocol
    from mgca_jax.models import vit
    c = loaded.config
    short, crop, stride = inference.config_protocol(c)
    return {
        "format": api.FORMAT, "format_version": api.FORMAT_VERSION,
        "model": c.model.to_dict(),
        "preprocessing": {"image_size": c.input.image_size, "mean": list(protocol.IMAGENET_MEAN),
                          "std": list(protocol.IMAGENET_STD),
                          "patch_size": vit.parse_variant(c.model.image_variant)["patch"],
                          "max_len": c.input.max_len, "object_max_len": c.input.object_max_len,
                          "object_template": c.input.object_template},
        "prompts": {"templates": list(protocol.get_templates(c.eval.templates)),
                    "template_set": c.eval.templates, "bg_thresh": c.eval.bg_thresh},
        "protocol": {"short_side": short, "max_long": 4 * short, "crop": crop, "stride": stride},
        "provenance": {"step": loaded.step, "checkpoint": os.path.abspath(loaded.path),
                       "dataset": {"name": c.data.name, "config": c.data.config_name,
                                   "examples": dataset_sizes(c)},
                       "source_version": source_version(), "train_config": c.to_dict()},
        "evaluation": evaluation_results(workdir),
    }


JAX_EXPORT_COMPATIBILITY = (
    "jax.export artifact (StableHLO): JAX promises that a newer JAX release, up to 6 months "
    "younger than the serializing one, can deserialize and run it; an older release or a "
    "longer gap is not promised (docs.jax.dev, export, 'Compatibility guarantees')")


def window_scorer(loaded: checkpoints.Loaded, crop: int) -> tuple[bytes, dict]:
    """The serialized per-window scorer at a fixed crop, and its config.json entry: the
    function `inference.Segmenter` pmaps (all three units, the run's bg_thresh), with
    the number of windows and of classes left symbolic."""
    import jax
    from jax import export

    from mgca_jax import inference
    c = loaded.config
    fn = functools.partial(inference.window_unit_scores, loaded.model, inference.UNITS,
                           inference.UnitConfig(), c.eval.bg_thresh)
    n, classes = export.symbolic_shape("n, c")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), loaded.params)
    exported = export.export(jax.jit(fn))(
        abstract, jax.ShapeDtypeStruct((n, crop, crop, 3), np.float32),
        jax.ShapeDtypeStruct((classes, c.model.embed_dim), np.float32))
    h, w = inference.patch_grid(loaded.model, (crop, crop))
    entry = {"file": api.WINDOW_SCORER, "crop": crop, "units": list(inference.UNITS),
             "unit_config": dataclasses.asdict(inference.UnitConfig()), "bg_thresh": c.eval.bg_thresh,
             "inputs": f"params (params.safetensors' tree), crops float32[n, {crop}, {crop}, 3] "
                       "normalised, class_emb float32[C, E] normalised",
             "output": f"float32[{len(inference.UNITS)}, n, {h}, {w}, C] patch-grid scores",
             "jax_version": jax.__version__, "compatibility": JAX_EXPORT_COMPATIBILITY}
    return bytes(exported.serialize()), entry


def model_card(meta: dict) -> str:
    prov, pre = meta["provenance"], meta["preprocessing"]
    ds = prov["dataset"]
    sizes = ", ".join(f"{k} {v:,}" for k, v in ds["examples"].items()) or "sizes unknown"
    lines = [f"# mgca_jax model: {meta['model']['image_variant']} image tower, "
             f"{meta['model']['text_variant']} text tower",
             "",
             f"Trained with MGCA's objective (mgca_jax) on `{ds['name']}` (config `{ds['config']}`; "
             f"{sizes}) for {prov['step']:,} steps at {pre['image_size']} px. Source version: "
             f"{prov['source_version'] or 'unknown'}.",
             "", "## Figures (from the training workdir)", ""]
    figures = [(name, r["miou"]) for name, r in meta["evaluation"].items() if "miou" in r]
    lines += [f"- `{name}`: mIoU {100 * m:.2f} %" for name, m in figures] or ["- none recorded"]
    lines += ["", "## Load", "", "```python", "import mgca_jax",
              "model = mgca_jax.load(\"THIS_DIRECTORY\")",
              "labels = model.segment(images, [\"cat\", \"dog\"])   # uint8 [H, W, 3] images", "```", "",
              "## Limits", "",
              f"- Segmentation defaults follow the training size: short side "
              f"{meta['protocol']['short_side']}, window {meta['protocol']['crop']}, stride "
              f"{meta['protocol']['stride']}; background below cosine {meta['prompts']['bg_thresh']}.",
              "- The vocabulary is the tokenizer's; words it never saw in captions carry little meaning.",
              "- Figures above are the workdir's own evaluations, not benchmark results unless named so.",
              ""]
    return "\n".join(lines)


def write_export(loaded: checkpoints.Loaded, tokenizer_path: str, workdir: str, out: str,
                 overwrite: bool = False, jax_export: bool = False) -> str:
    """Writes the export directory atomically; returns its path."""
    from safetensors.numpy import save_file
    out = os.path.abspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise api.ExportError(f"--out: {out} is a file")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise api.ExportError(f"--out: {out} is not empty (pass --overwrite to replace it)")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    meta = export_config(loaded, workdir)
    files = api.FILES
    if jax_export:
        scorer, meta["jax_export"] = window_scorer(loaded, meta["protocol"]["crop"])
        files = files + (api.WINDOW_SCORER,)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        save_file({k: np.asarray(v) for k, v in api.flatten(loaded.params).items()}, os.path.join(tmp, api.PARAMS),
                  metadata={"format": api.FORMAT, "format_version": str(api.FORMAT_VERSION)})
        with open(os.path.join(tmp, api.CONFIG), "w") as f:
            json.dump(meta, f, indent=1, default=float)
        shutil.copyfile(tokenizer_path, os.path.join(tmp, api.TOKENIZER))
        with open(os.path.join(tmp, api.CARD), "w") as f:
            f.write(model_card(meta))
        if jax_export:
            with open(os.path.join(tmp, api.WINDOW_SCORER), "wb") as f:
                f.write(scorer)
        with open(os.path.join(tmp, api.SUMS), "w") as f:
            f.writelines(f"{api.sha256(os.path.join(tmp, n))}  {n}\n" for n in files)
        os.chmod(tmp, 0o755)
        if os.path.isdir(out):                 # --overwrite (or empty): swap, then drop the old one
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "x"))
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None):
    p = cli_utils.Parser(prog="python -m mgca_jax.export", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="training directory (latest complete step)")
    p.add_argument("--checkpoint", help="one step: WORKDIR/checkpoints/STEP")
    p.add_argument("--tokenizer", help="SentencePiece model (default: the run's)")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--jax_export", action="store_true",
                   help=f"also serialize the per-window scorer at the default crop ({api.WINDOW_SCORER})")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        fail(f"--out: {out} is not empty (pass --overwrite to replace it)")
    try:
        loaded = checkpoints.load(args.workdir, args.checkpoint)
        tok_path = checkpoints.load_tokenizer(loaded.config, args.tokenizer).model_path
        workdir = args.workdir or os.path.dirname(os.path.dirname(os.path.normpath(args.checkpoint)))
        path = write_export(loaded, tok_path, workdir, out, args.overwrite, args.jax_export)
    except (checkpoints.CheckpointError, api.ExportError) as e:
        fail(e)
    print(f"exported step {loaded.step} of {loaded.path} -> {path}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
