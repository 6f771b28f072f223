"""Train-step throughput (images/s) against open_clip at equal dimensions, on CPU.

Times the project's jitted step (`train.make_train_step` + `train.jit_train_step`,
AdamW from `train.make_optimizer`) on random batches:

  image_text  the image-text InfoNCE only (mean pooling, global attention)
  full        configs/demo.py's loss settings (all five terms) at the same dimensions
  full_slots  the same with config.model.object_prompt_slots = --object_prompt_slots
              (each distinct object prompt of a batch through the text tower once)

Object prompts are drawn as in the data pipeline: one prompt per object word (--object_words
words), empty slots all padding.

With --peer PYTHON (an interpreter with torch and open_clip, e.g. /work/peer_venv/bin/python;
README "Throughput"), the same run also times open_clip's CLIP + ClipLoss + AdamW at
the same dimensions, eager and torch.compile, in a subprocess
(benchmarks/train_step_peer.py), so jax and torch never share a process. Project and
peer repetitions alternate; each figure is the median over --repeats of --steps
steps. Both sides run on the first --threads cores (sched_setaffinity; torch also
set_num_threads; XLA sizes its CPU pool from the affinity mask).

The breakdown of the image-text and full steps times separately jitted parts
(forward + backward each): the image tower, the text tower (captions; object
prompts for the full objective), each loss term on fixed embeddings, and the
optimizer update; with XLA's cost analysis FLOPs of each part. With a peer, the
breakdown gets a column of open_clip's eager parts of the same names (towers, loss,
AdamW), timed the same way. Parts are timed alone, so they need not add up to the step.

With --op_profile N, the first mode's whole step is traced with the JAX profiler and its
N costliest HLO ops are printed (time per step, joined to each op's op_name metadata), with
the share of matmuls against everything else.

Usage:
  .venv/bin/python benchmarks/train_step_speed.py [--peer /work/peer_venv/bin/python] [--op_profile 25]
      [--batch 128] [--image_size 64] [--steps 5] [--repeats 5] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pin_threads(n):
    cores = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cores)
    return cores


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--image_variant", default="mu/8", help="mu = width 128, 4 layers, MLP 384")
    ap.add_argument("--text_variant", default="mu", help="mu = width 128, 3 layers, MLP 384")
    ap.add_argument("--max_len", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--embed_dim", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer", default="", help="python with torch + open_clip; '' = no peer")
    ap.add_argument("--peer_modes", default="eager,compile")
    ap.add_argument("--modes", default="image_text,full,full_slots")
    ap.add_argument("--object_words", type=int, default=20, help="distinct object words drawn")
    ap.add_argument("--object_prompt_slots", type=int, default=64)
    ap.add_argument("--no_breakdown", action="store_true")
    ap.add_argument("--op_profile", type=int, default=0,
                    help="print the N costliest HLO ops of the first mode's step (JAX profiler); 0 = off")
    args = ap.parse_args(argv)
    if args.op_profile < 0:
        print(f"error: --op_profile: must be >= 0, got {args.op_profile}", file=sys.stderr)
        sys.exit(2)
    for name in ("batch", "image_size", "max_len", "vocab", "embed_dim", "steps", "repeats", "threads"):
        if getattr(args, name) <= 0:
            print(f"error: --{name}: must be positive, got {getattr(args, name)}", file=sys.stderr)
            sys.exit(2)
    bad = set(args.modes.split(",")) - {"image_text", "full", "full_slots"}
    if bad:
        print(f"error: --modes: unknown {sorted(bad)}; use image_text,full,full_slots", file=sys.stderr)
        sys.exit(2)
    if args.peer and not os.path.exists(args.peer):
        print(f"error: --peer: no such interpreter {args.peer}", file=sys.stderr)
        sys.exit(2)
    return args


def make_config(args, mode):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import common
    import demo
    c = common.base_config()
    c.batch_size, c.total_steps, c.warmup_steps, c.grad_clip = args.batch, 1000, 10, 0.0
    c.input.image_size, c.input.max_len = args.image_size, args.max_len
    c.input.object_max_len = min(c.input.object_max_len, args.max_len)   # within the position table
    c.model.image_variant, c.model.text_variant = args.image_variant, args.text_variant
    c.model.vocab_size, c.model.embed_dim, c.model.dtype = args.vocab, args.embed_dim, args.dtype
    c.input.object_words = args.object_words
    if mode == "full_slots":
        c.model.object_prompt_slots = args.object_prompt_slots
    if mode.startswith("full"):      # demo's objective and its settings; towers as above (global attention)
        saved = os.environ.pop("MGCA_SMOKE", None)
        try:
            c.loss = demo.get_config().loss
        finally:
            if saved is not None:
                os.environ["MGCA_SMOKE"] = saved
    return c


def random_batch(config, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    i, b = config.input, config.batch_size
    lengths = rng.integers(6, i.max_len + 1, b)
    tokens = rng.integers(4, config.model.vocab_size, (b, i.max_len)).astype(np.int32)
    tokens[np.arange(i.max_len)[None] >= lengths[:, None]] = 0
    words = rng.integers(4, config.model.vocab_size, (i.object_words, i.object_max_len)).astype(np.int32)
    words[np.arange(i.object_max_len)[None] >= rng.integers(5, i.object_max_len + 1, (i.object_words, 1))] = 0
    ids = rng.integers(0, i.object_words, (b, i.num_objects)).astype(np.int32)
    n_valid = rng.integers(1, i.num_objects + 1, b)
    valid = np.arange(i.num_objects)[None] < n_valid[:, None]
    obj = np.where(valid[..., None], words[ids], 0).astype(np.int32)
    return {"image": rng.normal(size=(b, i.image_size, i.image_size, 3)).astype(np.float32),
            "tokens": tokens, "object_tokens": obj,
            "object_ids": ids, "object_mask": valid}


class ProjectStep:
    """The trainer's jitted step on a fixed batch, compiled once (`compiled`: XLA's cost and
    memory analyses); `run(n)` returns seconds for n steps."""

    def __init__(self, config):
        import jax
        from mgca_jax import losses, sharding, train
        from mgca_jax.models.two_tower import make_model
        self.jax, self.config = jax, config
        self.model = make_model(config)
        self.tx, schedule = train.make_optimizer(config)
        init, abstract = train.abstract_state(self.model, self.tx, config)
        self.mesh = sharding.make_mesh()
        state_sh = sharding.state_shardings(abstract, self.mesh)
        self.train_step, self.loss_fn = train.make_train_step(self.model, self.tx, schedule, config, self.mesh)
        self.step_fn = train.jit_train_step(self.train_step, state_sh, self.mesh)
        batch = random_batch(config)
        if not losses.needs_objects(config.loss):
            batch = {k: batch[k] for k in ("image", "tokens")}
        self.batch = jax.device_put(batch, sharding.batch_sharding(self.mesh))
        self.rng = jax.random.key(0)
        with jax.set_mesh(self.mesh):
            self.state = jax.jit(init, out_shardings=state_sh)()
            t = time.perf_counter()
            self.compiled = self.step_fn.lower(self.state, self.batch, self.rng).compile()
            self.run(1)
            self.compile_s = time.perf_counter() - t
        self.n_params = sum(x.size for x in jax.tree.leaves(self.state["params"]))

    def run(self, n):
        with self.jax.set_mesh(self.mesh):
            t = time.perf_counter()
            for _ in range(n):
                self.state, metrics = self.compiled(self.state, self.batch, self.rng)
            loss = float(metrics["loss"])
            if loss != loss:
                raise FloatingPointError("project step: non-finite loss")
            return time.perf_counter() - t


class Peer:
    """benchmarks/train_step_peer.py in a subprocess, driven one command per line."""

    def __init__(self, python, args, mode, extra=()):
        cmd = [python, os.path.join(ROOT, "benchmarks", "train_step_peer.py"), "--mode", mode,
               "--threads", str(args.threads), "--batch", str(args.batch),
               "--image_size", str(args.image_size), "--patch", args.image_variant.split("/")[1],
               "--max_len", str(args.max_len), "--vocab", str(args.vocab),
               "--embed_dim", str(args.embed_dim), *extra]
        self.mode = mode
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited with status {self.proc.wait()}")
        return json.loads(line)

    def run(self, n):
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def parts(self, reps):
        self.proc.stdin.write(f"parts {reps}\n")
        self.proc.stdin.flush()
        return self._read()["parts"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def time_parts(step, reps):
    """{part: (median seconds, GFLOPs, MB accessed)} of separately jitted forward+backward
    parts; FLOPs and bytes from XLA's cost analysis of each compiled part."""
    import jax
    import jax.numpy as jnp
    from mgca_jax import losses
    model, config, params = step.model, step.config, step.state["params"]
    batch = step.batch
    with_objects = losses.needs_objects(config.loss)
    out = jax.jit(lambda p, b: model.apply({"params": p}, b, with_objects=with_objects))(params, batch)
    floats = {k: v for k, v in out.items() if k not in ("grid", "token_mask")}

    def grad_of(f):
        return jax.jit(jax.grad(lambda *a: jnp.sum(f(*a))))

    parts = {
        "image tower": (grad_of(lambda p: model.apply({"params": p}, batch["image"],
                                                      method=model.encode_image)["patch_embed"]), (params,)),
        "text tower (captions)": (grad_of(lambda p: model.apply({"params": p}, batch["tokens"],
                                                                 method=model.encode_text)["token_embed"]), (params,)),
    }
    if with_objects:
        b, k, lo = batch["object_tokens"].shape
        parts["text tower (object prompts)"] = (grad_of(lambda p: model.apply(
            {"params": p}, batch["object_tokens"].reshape(b * k, lo),
            method=model.encode_prompts)), (params,))
    for name, w in losses.active_terms(config.loss).items():
        cfg = config.loss.copy_and_resolve_references()
        cfg.weights = {n: (1.0 if n == name else 0.0) for n in losses.TERMS}
        parts[f"loss: {name}"] = (grad_of(lambda o, c=cfg: losses.total_loss(
            dict(o, token_mask=out["token_mask"]), batch, c, step.mesh, step.rng)[0]), (floats,))
    grads = jax.tree.map(jnp.ones_like, params)
    parts["optimizer (AdamW update)"] = (jax.jit(lambda g, s, p: step.tx.update(g, s, p)),
                                         (grads, step.state["opt_state"], params))
    result = {}
    with jax.set_mesh(step.mesh):
        for name, (fn, fargs) in parts.items():
            cost = fn.lower(*fargs).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            jax.block_until_ready(fn(*fargs))
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                jax.block_until_ready(fn(*fargs))
                times.append(time.perf_counter() - t)
            result[name] = (statistics.median(times), float(cost.get("flops", 0.0)) / 1e9,
                            float(cost.get("bytes accessed", 0.0)) / 1e6)
    return result


def op_name_key(op_name):
    """("backward", "image/encoder/blockNN/mlp/fc1/dot_general") from an HLO op_name such as
    "jit(step)/transpose(jvp(TwoTower))/image/encoder/block03/mlp/fc1/dot_general"."""
    import re
    direction = "backward" if "transpose(" in op_name else "forward"
    parts = [p for p in op_name.split("/") if not re.fullmatch(r"(jit|jvp|transpose|vmap|checkpoint)\(.*", p)]
    return direction, re.sub(r"(block)\d+", r"\1NN", "/".join(parts))


def op_profile(step, steps):
    """[(ms per step, calls per step, shape, direction, op)] of the step's HLO ops, costliest
    first, and the step's wall ms: the JAX profiler's trace of `steps` steps (perfetto JSON),
    each op event joined by instruction name to the compiled module's op_name metadata, ops
    of the same name path and shape summed (block indices merged)."""
    import collections
    import glob
    import gzip
    import re
    import tempfile
    jax = step.jax
    hlo = step.compiled.as_text()
    ops = {}
    for line in hlo.splitlines():
        m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]+)"', line)
        if m:
            ops[m.group(1)] = (re.sub(r"\{[^}]*\}", "", m.group(2)), *op_name_key(m.group(3)))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            wall = step.run(steps)
        traces = glob.glob(os.path.join(d, "**", "*.json.gz"), recursive=True)
        if not traces:
            raise RuntimeError(f"--op_profile: the JAX profiler wrote no perfetto trace under {d}")
        with gzip.open(traces[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in ops:
            total[ops[e["name"]]] += e["dur"] / 1e3 / steps    # microseconds -> ms per step
            calls[ops[e["name"]]] += 1 / steps
    if not total:
        raise RuntimeError("--op_profile: no event of the trace names an instruction of the compiled "
                           "step (this jaxlib's CPU runtime may not trace its ops)")
    rows = [(ms, calls[key], *key) for key, ms in total.most_common()]
    return rows, 1e3 * wall / steps


def main(argv=None):
    args = parse_args(argv)
    cores = pin_threads(args.threads)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    import jax
    print(f"machine: {os.cpu_count()} CPUs, pinned to cores {cores}; jax {jax.__version__} "
          f"({jax.default_backend()}); load average {os.getloadavg()[0]:.2f} at start", flush=True)
    print(f"dims: image {args.image_size} px {args.image_variant}, text {args.text_variant} "
          f"{args.max_len} tokens vocab {args.vocab}, embed {args.embed_dim}, batch {args.batch}, "
          f"dtype {args.dtype}; {args.repeats} repetitions x {args.steps} steps, medians", flush=True)
    runners = {}
    for mode in args.modes.split(","):
        step = ProjectStep(make_config(args, mode))
        runners[f"mgca_jax {mode}"] = step
        print(f"mgca_jax {mode}: {step.n_params / 1e6:.2f}M params, compile + first step "
              f"{step.compile_s:.1f} s", flush=True)
    peers = []
    if args.peer:
        for mode in args.peer_modes.split(","):
            peer = Peer(args.peer, args, mode)
            peers.append(peer)
            runners[f"open_clip {mode}"] = peer
            print(f"open_clip {mode}: {peer.info['params'] / 1e6:.2f}M params, torch "
                  f"{peer.info['torch']}, open_clip {peer.info['open_clip']}, warm-up "
                  f"{peer.info['warmup_s']:.1f} s", flush=True)
    peer_parts = {}
    try:
        rates = {name: [] for name in runners}
        for _ in range(args.repeats):       # alternate the systems within each repetition
            for name, r in runners.items():
                rates[name].append(args.batch * args.steps / r.run(args.steps))
        if not args.no_breakdown:
            peer_parts = {f"open_clip {p.mode}": p.parts(args.repeats) for p in peers if p.mode == "eager"}
    finally:
        for peer in peers:
            peer.close()
    print("\n| system | images/s (median) | min | max |\n| --- | ---: | ---: | ---: |")
    med = {}
    for name, v in rates.items():
        med[name] = statistics.median(v)
        print(f"| {name} | {med[name]:.1f} | {min(v):.1f} | {max(v):.1f} |")
    print("\nratios (images/s over images/s):")
    names = list(med)
    for a in names:
        for b in names:
            if a != b and (a.startswith("mgca_jax") or b == "mgca_jax image_text"):
                if a.startswith("mgca_jax") and b.startswith("mgca_jax") and a > b:
                    continue
                print(f"  {a} / {b}: {med[a] / med[b]:.2f}")
    for full in ("full", "full_slots"):
        if "mgca_jax image_text" in med and f"mgca_jax {full}" in med:
            print(f"  {full} step time / image-text step time: "
                  f"{med['mgca_jax image_text'] / med[f'mgca_jax {full}']:.2f}")
    if not args.no_breakdown:
        for name, step in runners.items():
            if not name.startswith("mgca_jax"):
                continue
            print(f"\nbreakdown of {name} (separately jitted forward+backward parts; median of "
                  f"{args.repeats} timed calls; FLOPs and bytes accessed from XLA cost analysis"
                  + ("; the peer's eager parts of the same name, timed the same way" if peer_parts else "")
                  + "):")
            peer_cols = list(peer_parts)
            print("| part | ms | GFLOP | MB accessed |" + "".join(f" {p} ms |" for p in peer_cols)
                  + "\n| --- | ---: | ---: | ---: |" + " ---: |" * len(peer_cols))
            for part, (sec, gflop, mbytes) in time_parts(step, args.repeats).items():
                cells = "".join(f" {1e3 * peer_parts[p][part]:.1f} |" if part in peer_parts[p] else " - |"
                                for p in peer_cols)
                print(f"| {part} | {1e3 * sec:.1f} | {gflop:.3g} | {mbytes:.4g} |{cells}")
            cells = "".join(f" {1e3 * args.batch / med[p]:.1f} |" for p in peer_cols)
            print(f"| whole step | {1e3 * args.batch / med[name]:.1f} | - | - |{cells}")
    if args.op_profile:
        name = next(n for n in runners if n.startswith("mgca_jax"))
        rows, wall_ms = op_profile(runners[name], args.steps)
        covered = sum(r[0] for r in rows)
        print(f"\nop profile of {name} (JAX profiler trace of {args.steps} steps; each HLO op's "
              f"time joined to its op_name, block indices merged): {covered:.1f} ms of op time in a "
              f"{wall_ms:.1f} ms traced step (XLA runs independent ops, e.g. the two towers, "
              f"concurrently, so op times can add up to more than the step); the "
              f"{args.op_profile} costliest:")
        print("| ms/step | share of step | calls/step | shape | pass | op |\n| ---: | ---: | ---: | --- | --- | --- |")
        for ms, n, shape, direction, op in rows[:args.op_profile]:
            print(f"| {ms:.2f} | {100 * ms / wall_ms:.1f} % | {n:.0f} | {shape} | {direction} | {op} |")
        kinds = {}
        for ms, _, _, _, op in rows:
            kind = "matmul (dot_general)" if op.endswith("dot_general") else "other ops"
            kinds[kind] = kinds.get(kind, 0.0) + ms
        print("by kind, share of the op time: "
              + ", ".join(f"{k} {v:.1f} ms ({100 * v / covered:.0f} %)" for k, v in kinds.items()))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end", flush=True)


if __name__ == "__main__":
    main()
