"""Per-device parameter and optimizer-state memory, replicated vs FSDP.

For each image tower (default S/16, B/16, L/14) with the CC3M config's text
tower (configs/cc3m.py: text "S", 77 tokens, 256-d joint space; vocabulary
--vocab_size, the 16k CC3M tokenizer by default), the training state
{"step", "params", "opt_state"} is built abstractly (`train.abstract_state`:
`jax.eval_shape` of the init, nothing allocated), given the shardings that
training uses (`sharding.state_shardings(abstract, mesh, mode)`) on a mesh of
--devices devices, and each leaf's per-device bytes are read off its shard
shape (`NamedSharding.shard_shape`):

  params      the model parameters (float32)
  optimizer   AdamW's mu and nu (float32, shaped like the params) and counters
  whole       under fsdp: bytes of the leaves that stay whole on every device
              (smaller than `min_size` elements, or no dimension divisible by
              the device count); fsdp x devices = replicated + (devices - 1) x whole

Gradients add one more params-sized buffer per device during the step (same
sharding as the params); activations are not counted here (see
benchmarks/loss_memory.py for the loss).

Usage (8 host CPU devices are forced if XLA_FLAGS does not set a count):
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
      .venv/bin/python benchmarks/param_memory.py [--variants S/16,B/16,L/14] [--devices 8]
"""
import argparse
import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mgca_jax import sharding, train  # noqa: E402
from mgca_jax.models.two_tower import make_model  # noqa: E402

MiB = 2.0 ** 20


def cc3m_config(image_variant, vocab_size=16_000):
    import cc3m
    c = cc3m.get_config()
    c.model.image_variant = image_variant
    c.model.vocab_size = vocab_size
    return c


def _leaf_bytes(x, sh):
    shape = sh.shard_shape(tuple(x.shape)) if sh is not None else tuple(x.shape)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def state_memory(config, mesh, mode, min_size=2 ** 14):
    """Per-device bytes of the training state under `mode` ("replicated" / "fsdp").

    Returns dict(params=number of parameters, param_bytes, opt_bytes, whole_bytes,
    global_param_bytes, global_opt_bytes).
    """
    model = make_model(config)
    tx, _ = train.make_optimizer(config)
    _, abstract = train.abstract_state(model, tx, config)
    shardings = sharding.state_shardings(abstract, mesh, mode, min_size=min_size)
    out = dict(params=0, param_bytes=0, opt_bytes=0, whole_bytes=0,
               global_param_bytes=0, global_opt_bytes=0)
    n = mesh.devices.size
    for part in ("params", "opt_state"):
        leaves = jax.tree.leaves(abstract[part])
        shs = jax.tree.leaves(shardings[part])
        assert len(leaves) == len(shs), (part, len(leaves), len(shs))
        for x, sh in zip(leaves, shs):
            local, full = _leaf_bytes(x, sh), _leaf_bytes(x, None)
            key = "param" if part == "params" else "opt"
            out[f"{key}_bytes"] += local
            out[f"global_{key}_bytes"] += full
            if n > 1 and local == full:
                out["whole_bytes"] += full
            if part == "params":
                out["params"] += int(np.prod(x.shape, dtype=np.int64))
    return out


def table(variants, n_devices, vocab_size=16_000):
    """Rows (variant, {mode: state_memory}) for each image variant."""
    devices = jax.devices()
    if len(devices) < n_devices:
        raise SystemExit(f"need {n_devices} devices, have {len(devices)} "
                         f"(set XLA_FLAGS=--xla_force_host_platform_device_count={n_devices})")
    mesh = sharding.make_mesh(devices[:n_devices])
    rows = []
    for v in variants:
        config = cc3m_config(v, vocab_size)
        rows.append((v, {m: state_memory(config, mesh, m) for m in ("replicated", "fsdp")}))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="S/16,B/16,L/14")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--vocab_size", type=int, default=16_000)
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    c = cc3m_config(variants[0], args.vocab_size)
    print(f"jax {jax.__version__}, {args.devices} {jax.devices()[0].platform} devices (mesh "
          f"'data'); text tower {c.model.text_variant} ({c.input.max_len} tokens, vocab "
          f"{args.vocab_size}), embed {c.model.embed_dim}, image {c.input.image_size}px; params "
          "float32, AdamW mu + nu float32; fsdp splits each array of >= 16384 elements along its "
          "largest dimension divisible by the device count")
    print(f"{'variant':<8} {'params M':>9} {'mode':<11} {'param MiB/dev':>14} "
          f"{'optim MiB/dev':>14} {'state MiB/dev':>14} {'whole MiB':>10} {'fsdp saving':>12}")
    for v, res in table(variants, args.devices, args.vocab_size):
        rep = res["replicated"]
        for mode in ("replicated", "fsdp"):
            r = res[mode]
            state = r["param_bytes"] + r["opt_bytes"]
            saving = (rep["param_bytes"] + rep["opt_bytes"]) / state
            print(f"{v:<8} {r['params'] / 1e6:>9.2f} {mode:<11} {r['param_bytes'] / MiB:>14.1f} "
                  f"{r['opt_bytes'] / MiB:>14.1f} {state / MiB:>14.1f} "
                  f"{r['whole_bytes'] / MiB if mode == 'fsdp' else 0:>10.2f} {saving:>11.2f}x",
                  flush=True)
    print("(state = params + optimizer; gradients add one params-sized buffer during the step; "
          "'whole' = fsdp leaves kept whole on each device; activations not included)")


if __name__ == "__main__":
    main()
