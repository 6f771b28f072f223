"""Trains configs/tiny.py through random faults, restarting on the same workdir after each.

  python benchmarks/fault_injection.py --faults=20 [--chains=1] [--steps=N] [--seed=0] [--out=DIR]

Faults, each kind equally often in a random order: kill -9 two to four steps
after the last checkpoint; kill -9 during a checkpoint write (after the log line
of a checkpoint step, polling until orbax's temporary dir of that step appears,
then killing at once; it counts as landed if afterwards the temporary dir is
there and the step is not); SIGTERM; and truncating the newest complete
checkpoint's files before the restart. Prints per fault what happened, then how
many restarts resumed, the steps lost beyond the last complete checkpoint, and
whether the final params equal those of an uninterrupted run of the same length.
--chains=K spreads the faults over K workdirs faulted at the same time (each
restarts on its own workdir and is compared with the one uninterrupted run): on
a busy machine each restart's start-up takes minutes, and chains overlap them.
Default --steps: 3 x faults per chain + 10.
Exits 1 if a trainer fails or a check does not hold.
"""
import argparse
import concurrent.futures
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

# The trainers run on 2 host devices; restoring their checkpoints here needs the same topology.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
FAULTS = ("kill9", "kill9_in_save", "sigterm", "corrupt_newest")
EVERY = 2         # checkpoint_every


def trainer(workdir, data_dir, steps):
    # Every restart compiles the same programs: JAX's persistent cache (beside the workdirs)
    # spares that time; the executables, and so the params, are the same.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.dirname(workdir), "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return subprocess.Popen(
        [sys.executable, "-m", "mgca_jax.main", "--config=configs/tiny.py", f"--workdir={workdir}",
         f"--config.data_dir={data_dir}", f"--config.total_steps={steps}", "--config.log_every=1",
         f"--config.checkpoint_every={EVERY}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def complete_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def writing(workdir, step):
    """Whether orbax's temporary dir of `step` (STEP.orbax-checkpoint-tmp...) is there."""
    d = os.path.join(workdir, "checkpoints")
    return os.path.isdir(d) and any(s.startswith(f"{step}.") and "tmp" in s for s in os.listdir(d))


def wait_for_write(workdir, step, proc, timeout=120):
    """Polls (1 ms) until the temporary dir of `step` appears, or the step is complete."""
    t0 = time.time()
    while not writing(workdir, step) and step not in complete_steps(workdir):
        if proc.poll() is not None or time.time() - t0 > timeout:
            sys.exit(f"trainer never started writing step {step}")
        time.sleep(0.001)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"trainer failed (exit {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return out


def corrupt(step_dir):
    for d, _, fs in os.walk(step_dir):
        for f in fs:
            path = os.path.join(d, f)
            with open(path, "r+b") as fh:
                fh.truncate(os.path.getsize(path) // 2)


def params(workdir, step):
    import jax
    import orbax.checkpoint as ocp
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as mngr:
        return [np.asarray(x) for x in jax.tree.leaves(mngr.restore(step)["params"])]


def run_chain(name, faulted, data_dir, steps, kinds, rnd):
    """One workdir through `kinds` faults, each followed by a restart; then the final run."""
    resumed, lost_beyond, restarts, in_write, tried_in_write = 0, 0, 0, 0, 0
    applied = []                       # the kinds as done (corrupt_newest may become kill9)
    pending_resume = None              # the step a restart must resume from
    for i, kind in enumerate(kinds):
        done = complete_steps(faulted)
        start = done[-1] if done else 0
        if start + EVERY + 3 > steps:
            sys.exit(f"[{name}] fault {i + 1}: the run reached step {start} of --steps={steps}; "
                     "use more --steps or --chains")
        proc = trainer(faulted, data_dir, steps)
        restarts += 1
        out, reached = [], start
        next_save = (start // EVERY + 1) * EVERY
        # kill9_in_save: the log line of a checkpoint step comes just before its save starts.
        target = next_save if kind == "kill9_in_save" else start + rnd.randint(EVERY, EVERY + 2)
        for line in proc.stdout:
            out.append(line)
            m = re.match(r"step (\d+)/", line)
            if m:
                reached = int(m.group(1))
                if reached >= target:
                    break
        text = "".join(out)
        if pending_resume is not None:
            m = re.search(r"resumed from \S+/(\d+)", text)
            got = int(m.group(1)) if m else 0
            resumed += got == pending_resume
            lost_beyond += max(0, pending_resume - got)
        landed = ""
        if kind == "sigterm":
            proc.send_signal(signal.SIGTERM)
            finish(proc)
        else:
            if kind == "kill9_in_save":
                wait_for_write(faulted, reached, proc)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=120)
            if kind == "kill9_in_save":
                # Landed in the write: orbax's temporary dir of the step is there, the step is not.
                hit = writing(faulted, reached) and reached not in complete_steps(faulted)
                in_write += hit
                tried_in_write += 1
                landed = f" (during the write of step {reached}: {'yes' if hit else 'no'})"
        done = complete_steps(faulted)
        if kind == "corrupt_newest" and len(done) < 2:
            kind = "kill9"             # no older checkpoint to fall back to (that is an error)
            landed = " (drawn as corrupt_newest; fewer than 2 complete checkpoints)"
        if kind == "corrupt_newest":
            corrupt(os.path.join(faulted, "checkpoints", str(done[-1])))
            landed = f" (truncated the files of step {done[-1]})"
            done = done[:-1]
        pending_resume = done[-1] if done else 0
        applied.append(kind)
        print(f"[{name}] fault {i + 1}: {kind} at step {reached}{landed}; complete checkpoints {done}",
              flush=True)
    proc = trainer(faulted, data_dir, steps)
    text = finish(proc)
    m = re.search(r"resumed from \S+/(\d+)", text)
    got = int(m.group(1)) if m else 0
    resumed += got == pending_resume
    lost_beyond += max(0, (pending_resume or 0) - got)
    quarantined = os.listdir(os.path.join(faulted, "quarantine")) \
        if os.path.isdir(os.path.join(faulted, "quarantine")) else []
    return {"faults": restarts, "resumed": resumed, "in_write": in_write,
            "tried_in_write": tried_in_write, "lost_beyond": lost_beyond,
            "quarantined": len(quarantined), "applied": applied}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faults", type=int, default=20, help="in all chains together")
    p.add_argument("--chains", type=int, default=1,
                   help="workdirs faulted concurrently, each compared with the uninterrupted run")
    p.add_argument("--steps", type=int, default=0,
                   help="length of the runs (default 3 x faults per chain + 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="scratch dir (default: a temporary one)")
    args = p.parse_args(argv)
    if args.faults < 1 or not 1 <= args.chains <= args.faults:
        print("fault_injection.py: need --faults >= 1 and 1 <= --chains <= --faults", file=sys.stderr)
        return 2
    args.steps = args.steps or 3 * -(-args.faults // args.chains) + 10
    rnd = random.Random(args.seed)
    root = args.out or tempfile.mkdtemp(prefix="fault_injection_")
    data_dir, straight = os.path.join(root, "data"), os.path.join(root, "straight")
    os.makedirs(data_dir, exist_ok=True)
    t0 = time.time()
    finish(trainer(straight, data_dir, args.steps))
    print(f"uninterrupted run: {args.steps} steps in {time.time() - t0:.0f}s", flush=True)

    kinds = []                         # every kind equally often, in a random order
    while len(kinds) < args.faults:
        kinds += rnd.sample(FAULTS, len(FAULTS))
    kinds = kinds[:args.faults]
    names = [f"c{c}" for c in range(args.chains)]
    with concurrent.futures.ThreadPoolExecutor(args.chains) as pool:
        futures = [pool.submit(run_chain, name, os.path.join(root, "faulted" if args.chains == 1
                                                             else f"faulted_{name}"),
                               data_dir, args.steps, kinds[c::args.chains],
                               random.Random(args.seed * 1000 + c))
                   for c, name in enumerate(names)]
        results = [f.result() for f in futures]
    want = params(straight, args.steps)
    same = [all(np.array_equal(a, b) for a, b in zip(want, params(
        os.path.join(root, "faulted" if args.chains == 1 else f"faulted_{n}"), args.steps)))
        for n in names]
    total = {k: sum(r[k] for r in results) for k in results[0] if k != "applied"}
    applied = [k for r in results for k in r["applied"]]
    drawn = ", ".join(f"{k} {applied.count(k)}" for k in FAULTS)
    print(f"faults: {total['faults']} ({drawn}) in {args.chains} chain(s); restarts that resumed from "
          f"the newest readable checkpoint: {total['resumed']}/{total['faults']}; kills that landed "
          f"during a checkpoint write: {total['in_write']}/{total['tried_in_write']}; quarantined "
          f"checkpoints: {total['quarantined']}; steps lost beyond the last complete checkpoint: "
          f"{total['lost_beyond']}; final params equal to the uninterrupted run: "
          f"{sum(same)}/{len(same)}; {time.time() - t0:.0f}s", flush=True)
    return 0 if all(same) and total["resumed"] == total["faults"] and total["lost_beyond"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
