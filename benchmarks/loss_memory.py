"""Per-device memory and time of the training loss + gradient as the device count grows.

The local batch is fixed (default 8 images per device), so the global batch grows
with the device count: 1, 2, 4, 8 host CPU devices -> global batch 8 ... 64.  For each,
`jax.jit(jax.value_and_grad(total_loss))` (w.r.t. the model outputs `out`, with `out`
and `batch` sharded over the "data" axis) is compiled and its
`compiled.memory_analysis()` read:

  argument  bytes of the inputs (out, batch, rng) resident on the device
  output    bytes of the results (loss + gradient w.r.t. out)
  temp      XLA's temporary buffer (all intermediates, after buffer reuse: the peak
            of live temporaries found by buffer assignment)
  peak      argument + output + temp - alias (nothing is donated here, alias = 0);
            generated code size is not counted.

On the host (CPU) platform with N forced devices the compiled executable is the
SPMD-partitioned program of ONE device: its shapes are the per-device shards, so the
numbers are already per device (the script checks this by comparing the reported
argument bytes with the local and global input sizes and says which one it matched;
if it ever reports whole-program numbers it divides by the device count).

`--naive` adds, for comparison, the memory of the same loss computed on one device
over the whole global batch, i.e. what every device would hold if each all-gathered
the inputs and computed the full objective redundantly.

Usage:  .venv/bin/python benchmarks/loss_memory.py [--naive] [--local-batch 8] ...
"""
import argparse
import os
import statistics
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from configs.common import base_config, multi_grained_loss  # noqa: E402
from mgca_jax import losses  # noqa: E402
from mgca_jax.sharding import DATA, make_mesh  # noqa: E402

MB = 2.0 ** 20


def make_inputs(global_batch, n, k, e, l, seed=0):
    r = np.random.default_rng(seed)
    f = lambda *s: r.normal(size=s).astype(np.float32)
    out = dict(patch_embed=f(global_batch, n, e), image_embed=f(global_batch, e),
               token_embed=f(global_batch, l, e), text_embed=f(global_batch, e),
               object_embed=f(global_batch, k, e), logit_scale=np.float32(1 / 0.07))
    tokens = r.integers(4, 512, size=(global_batch, l)).astype(np.int32)
    tokens[:, 0] = 2
    lengths = r.integers(6, l, size=global_batch)
    tokens[np.arange(global_batch), lengths] = 3
    tokens[np.arange(l)[None] > lengths[:, None]] = 0
    mask = r.random((global_batch, k)) < 0.8
    ids = np.where(mask, r.integers(4, 60, size=(global_batch, k)), -1).astype(np.int32)
    batch = dict(tokens=tokens, object_ids=ids, object_mask=mask)
    return out, batch


def nbytes(tree):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def measure(mesh, out, batch, cfg, reps):
    """Compile loss+grad on `mesh`; return memory stats (bytes) and median seconds."""
    n_dev = mesh.shape[DATA]
    shard = lambda x: NamedSharding(mesh, P() if np.ndim(x) == 0 else P(DATA))
    out = jax.device_put(out, jax.tree.map(shard, out))
    batch = jax.device_put(batch, jax.tree.map(shard, batch))
    rng = jax.device_put(jax.random.key(0), NamedSharding(mesh, P()))

    def loss(o, b, k):
        return losses.total_loss(o, b, cfg, mesh, k)[0]

    fn = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = fn.lower(out, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    arg, outb, temp = ma.argument_size_in_bytes, ma.output_size_in_bytes, ma.temp_size_in_bytes
    alias = ma.alias_size_in_bytes
    global_args = nbytes((out, batch))
    # logit_scale (4 bytes) is replicated, the rest is split; the rng key adds a few bytes
    local_args = (global_args - 4) // n_dev + 4
    per_device = abs(arg - local_args) <= abs(arg - global_args)
    div = 1 if per_device else n_dev
    peak = (arg + outb + temp - alias) / div

    jax.block_until_ready(compiled(out, batch, rng))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(out, batch, rng))
        times.append(time.perf_counter() - t0)
    return dict(arg=arg / div, out=outb / div, temp=temp / div, peak=peak, per_device=per_device,
                local_args=local_args, global_args=global_args,
                time=statistics.median(times), compile=compile_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local-batch", type=int, default=8)
    ap.add_argument("--patches", type=int, default=196)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--devices", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--naive", action="store_true",
                    help="also compile the loss on 1 device over the whole global batch")
    args = ap.parse_args()

    cfg = multi_grained_loss(base_config(), background=1.0).loss
    counts = [int(x) for x in args.devices.split(",")]
    devs = jax.devices()
    if max(counts) > len(devs):
        sys.exit(f"need {max(counts)} devices, have {len(devs)} ({devs[0].platform})")
    print(f"platform={devs[0].platform} jax={jax.__version__} "
          f"local batch={args.local_batch} N={args.patches} K={args.objects} E={args.dim} "
          f"L={args.tokens}")
    print("loss: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "weights")
          + " | weights " + ", ".join(f"{k}={v}" for k, v in cfg.weights.items()))
    print("memory: per device, MiB, from compiled.memory_analysis(); "
          "peak = argument + output + temp (alias 0)")

    header = (f"{'devices':>7} {'global B':>8} {'argument':>9} {'output':>8} {'temp':>8} "
              f"{'peak':>8} {'median s':>9} {'compile s':>9}")
    if args.naive:
        header += f" {'naive peak':>10} {'naive s':>8}"
    print(header)
    rows = []
    for n in counts:
        gb = args.local_batch * n
        out, batch = make_inputs(gb, args.patches, args.objects, args.dim, args.tokens)
        m = measure(make_mesh(devs[:n]), out, batch, cfg, args.reps)
        line = (f"{n:>7} {gb:>8} {m['arg'] / MB:>9.2f} {m['out'] / MB:>8.2f} {m['temp'] / MB:>8.2f} "
                f"{m['peak'] / MB:>8.2f} {m['time']:>9.3f} {m['compile']:>9.1f}")
        if args.naive:
            nv = measure(make_mesh(devs[:1]), out, batch, cfg, args.reps)
            line += f" {nv['peak'] / MB:>10.2f} {nv['time']:>8.3f}"
            m["naive"] = nv["peak"]
        print(line, flush=True)
        rows.append((n, m))

    checks = ", ".join(
        f"{n}: {'per-device' if m['per_device'] else 'whole-program (divided by devices)'}"
        f" (argument {m['arg'] * (1 if m['per_device'] else n):.0f} B vs local inputs "
        f"{m['local_args']} B / global {m['global_args']} B)" for n, m in rows)
    print(f"memory_analysis scope -> {checks}")
    peaks = [m["peak"] for _, m in rows]
    ratio = max(peaks) / min(peaks)
    growth = rows[-1][0] * args.local_batch / (rows[0][0] * args.local_batch)
    print(f"largest / smallest per-device peak: {ratio:.3f}x while the global batch grows "
          f"{growth:.0f}x (target <= 1.5x): {'OK' if ratio <= 1.5 else 'ABOVE TARGET'}")
    if args.naive:
        nv = [m["naive"] for _, m in rows]
        print(f"naive (1 device, whole global batch): largest / smallest {max(nv) / min(nv):.3f}x")


if __name__ == "__main__":
    main()
