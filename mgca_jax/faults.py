"""What the trainer does on each fault (docs/method.md, "Faults").

  non-finite loss or gradient   stop (exit 3) or skip the update (config.nonfinite)
  unreadable newest checkpoint  move it to WORKDIR/quarantine, resume from the next
  checkpoint of another shape   one-line error (exit 2) before anything is written
  a second trainer              WORKDIR/lock names the holder; the second exits (exit 2)
  SIGTERM on any host           every host stops at the same step (StopFlag)

Every error is a `TrainError` whose message is one line; main.py prints it and
exits with its `exit_code`.
"""
import json
import os
import shutil
import signal
import socket

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

NONFINITE_MODES = ("stop", "skip_step")


class TrainError(Exception):
    """A fault the trainer cannot continue past (one-line message)."""
    exit_code = 2


class NonFiniteError(TrainError):
    """The loss or gradient went non-finite with config.nonfinite = "stop"."""
    exit_code = 3


def _all_processes_agree(ok: bool) -> bool:
    """True only if every process says ok (one cheap collective; no-op on one process)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# --- one writer per workdir

def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True           # someone else's process, or an unreadable pid: assume alive
    return True


class WorkdirLock:
    """WORKDIR/lock, created exclusively by process 0 and holding {"host", "pid"}.

    A lock whose pid is gone on this same host (a killed run) is stale and replaced.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "lock")
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}                # being written this instant, or unreadable

    def _try_acquire(self):
        """None when acquired, else the error message."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == self.me["host"] and "pid" in holder \
                        and not _pid_alive(holder["pid"]):
                    print(f"removing the stale lock {self.path} of pid {holder['pid']} "
                          "(no longer running)", flush=True)
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                return (f"--workdir: {os.path.dirname(self.path)} is in use by pid "
                        f"{holder.get('pid', '?')} on host {holder.get('host', '?')} "
                        f"(lock {self.path}); wait for it or use another workdir")
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            return None
        return f"--workdir: could not create the lock {self.path}"

    def acquire(self):
        error = self._try_acquire() if jax.process_index() == 0 else None
        if not _all_processes_agree(error is None):
            self.release()
            raise TrainError(error or "--workdir: process 0 could not lock the workdir")

    def release(self):
        if self.held and self._holder().get("pid") == self.me["pid"]:
            os.remove(self.path)
        self.held = False


# --- restoring past unreadable checkpoints

def _plain(path) -> tuple:
    """A tree path as plain names (orbax saves named tuples as dicts)."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _shape_mismatch(directory, step, target):
    """A one-line message naming the first param (params first) whose saved shape differs,
    else None. Raises whatever orbax raises when the metadata cannot be read."""
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(os.path.join(directory, str(step), "default"))
    saved = getattr(saved, "item_metadata", saved)
    saved_flat = {_plain(p): m for p, m in
                  jax.tree_util.tree_leaves_with_path(dict(getattr(saved, "tree", saved)))}
    leaves = jax.tree_util.tree_leaves_with_path(target)
    for path, want in sorted(leaves, key=lambda pw: pw[0][0].key != "params"):
        key = jax.tree_util.keystr(path)
        got = saved_flat.get(_plain(path))
        if got is None:
            return f"{key} is missing from the checkpoint, the config builds {tuple(want.shape)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"{key} has shape {tuple(got.shape)}, the config builds {tuple(want.shape)}"
    return None


def quarantine(checkpoints_dir: str, step: int) -> str:
    """Moves checkpoints_dir/STEP to WORKDIR/quarantine/STEP (never deletes); returns it."""
    dest_root = os.path.join(os.path.dirname(checkpoints_dir), "quarantine")
    os.makedirs(dest_root, exist_ok=True)
    dest, n = os.path.join(dest_root, str(step)), 1
    while os.path.exists(dest):
        dest, n = os.path.join(dest_root, f"{step}.{n}"), n + 1
    shutil.move(os.path.join(checkpoints_dir, str(step)), dest)
    return dest


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:200]


def restore_newest_readable(mngr, target):
    """(state, step) of the newest checkpoint that restores, or (None, None) when there is
    none. Unreadable ones go to quarantine; a checkpoint of another shape is a TrainError.

    With several processes, a step counts as readable only if every process read it
    (one all-gather per try), so all of them resume from the same step; only process 0
    moves an unreadable one, and the others reload only after it has.
    """
    directory = str(mngr.directory)
    steps = sorted(mngr.all_steps(), reverse=True)
    for step in steps:
        try:
            mismatch = _shape_mismatch(directory, step, target)
        except Exception as e:  # noqa: BLE001  orbax raises many types for bad files
            mismatch, error = None, e
        else:
            error = None
        if mismatch:
            raise TrainError(f"--workdir: checkpoint {directory}/{step} does not fit the config: "
                             f"param {mismatch}; resume with the run's config or use a new workdir")
        if _all_processes_agree(error is None):
            try:
                state = mngr.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # noqa: BLE001
                error = e
            if _all_processes_agree(error is None):
                return state, step
        reason = _first_line(error) if error else "another process could not read it"
        moved, move_error = "quarantine", None
        if jax.process_index() == 0:
            try:
                moved = quarantine(directory, step)
            except OSError as e:
                move_error = e
        if not _all_processes_agree(move_error is None):   # also: nobody reloads before the move
            raise TrainError(f"--workdir: checkpoint {directory}/{step} is unreadable ({reason}) "
                             f"and process 0 could not move it to quarantine/ "
                             f"({_first_line(move_error) if move_error else 'see its log'})")
        print(f"warning: checkpoint {directory}/{step} is unreadable ({reason}); "
              f"moved it to {moved}", flush=True)
        mngr.reload()
    if steps:
        raise TrainError(f"--workdir: no readable checkpoint in {directory} (moved {len(steps)} "
                         "unreadable to quarantine/); remove the workdir's checkpoints/ to start over")
    return None, None


# --- non-finite loss or gradient

def checked_metrics(metrics) -> list[str]:
    """The metrics whose finiteness is tracked: each loss term, the total, the gradient norm."""
    return sorted(k for k in metrics if k.startswith("loss_")) + ["loss", "grad_norm"]


def new_guard(metrics) -> dict:
    return {"first_bad_step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32),
            "bad": {k: jnp.zeros((), bool) for k in checked_metrics(metrics)}}


@jax.jit
def update_guard(guard, metrics, step):
    """On device, no host sync: counts non-finite steps and remembers the first one."""
    bad = {k: ~jnp.isfinite(metrics[k]) for k in guard["bad"]}
    any_bad = jnp.any(jnp.stack(list(bad.values())))
    first = any_bad & (guard["first_bad_step"] == 0)
    return {"first_bad_step": jnp.where(first, step, guard["first_bad_step"]),
            "skipped": guard["skipped"] + any_bad.astype(jnp.int32),
            "bad": {k: jnp.where(first, bad[k], guard["bad"][k]) for k in bad}}


def check_guard(guard, mode: str, last_saved) -> int:
    """Host check (at log, save and eval time): raises NonFiniteError in "stop" mode once
    any step went non-finite; returns the number of non-finite (skipped) steps."""
    g = jax.device_get(guard)
    first = int(g["first_bad_step"])
    if first and mode == "stop":
        names = [k for k in checked_metrics(g["bad"]) if g["bad"][k]]
        saved = f"step {last_saved}" if last_saved else "none"
        raise NonFiniteError(
            f"non-finite {', '.join(names)} at step {first}; stopped without saving "
            f"(last good checkpoint: {saved}); lower config.lr, set config.grad_clip, or set "
            "config.nonfinite='skip_step'")
    return int(g["skipped"])


# --- coordinated preemption

class StopFlag:
    """SIGTERM: save at the next step and exit. Several processes agree on the step
    through JAX's preemption sync service (the notice reaches every process)."""

    def __init__(self):
        self.local = False
        self.multi = jax.process_count() > 1
        self._previous = None
        if not self.multi:     # the service installs its own SIGTERM handler
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *_):
        self.local = True

    def should_stop(self, step: int) -> bool:
        """Called once per step, at every step, by every process."""
        if self.multi:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.local

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
