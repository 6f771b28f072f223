"""Plants small, plausible bugs in core code, one at a time, and runs the tests that should catch them.

  ./run.sh python benchmarks/mutation_check.py                 # all mutants
  ./run.sh python benchmarks/mutation_check.py --only=adaptive,resume --jobs=2

Each mutant replaces one snippet of one file (it must occur exactly once) in a
scratch copy of the repository, then runs its test files there with pytest
(`-x`, so a caught mutant stops at its first failure). Before the mutants, the
same test files run once on the unmutated copy: a mutant only counts as caught
when its tests pass without it. Prints one line per mutant, then caught/total
and the survivors with what they break. Exit status: 0 all caught, 1 survivors,
2 a mutant whose snippet no longer matches the code (fix the list) or a failing
baseline.

Run it when a core module changes. It is a benchmark, not part of the CI suite
(tests/test_mutation_check.py only checks that every snippet still applies).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str              # file, relative to the repository root
    old: str               # snippet that must occur exactly once
    new: str
    tests: tuple[str, ...]  # pytest targets that should catch it
    breaks: str            # what the bug does, in words


M = Mutant
MUTANTS: tuple[Mutant, ...] = (
    # --- the five bugs of the test audit (issue 15)
    M("adaptive_no_coherence", "mgca_jax/inference.py",
      "coarse = (agreement >= cfg.agreement_thresh) & (coherence >= cfg.coherence_thresh)",
      "coarse = agreement >= cfg.agreement_thresh",
      ("tests/test_inference.py",), "adaptive unit ignores the coherence threshold"),
    M("total_loss_device_mean", "mgca_jax/losses.py",
      "values[name] = jax.lax.psum(value * count, DATA) / jnp.maximum(total_count, 1.0)",
      "values[name] = jax.lax.pmean(value, DATA)",
      ("tests/test_losses.py",), "loss averaged per device instead of weighted by anchor count"),
    M("segmenter_window_order", "mgca_jax/inference.py",
      "res = np.moveaxis(res, 0, 1).reshape(",
      "res = res.transpose(1, 2, 0, 3, 4, 5).reshape(",
      ("tests/test_inference.py",), "windows re-ordered wrongly when a device gets several"),
    M("resume_replays_from_step_0", "mgca_jax/data/input_pipeline.py",
      "epoch, position = divmod(start_step * local_batch, part)", "epoch, position = 0, 0",
      ("tests/test_input_pipeline.py::test_resume_gives_the_same_batches",
       "tests/test_train.py::test_save_stop_resume_is_identical"),
      "a resumed run reads the data from the start again"),
    M("ensemble_not_renormalised", "mgca_jax/evaluation/zeroshot.py",
      "    return l2_normalize(emb)\n", "    return emb\n",
      ("tests/test_inference_zeroshot.py",),
      "prompt-ensemble class embeddings are not renormalised"),
    # --- losses
    M("ce_weighted_mean_wrong", "mgca_jax/losses.py",
      "return (nll * weights).sum() / jnp.maximum(count, 1.0), count",
      "return (nll * weights).mean(), count",
      ("tests/test_losses.py",), "weighted cross-entropy divides by all anchors, not valid ones"),
    M("image_text_t2i_is_i2t", "mgca_jax/losses.py",
      "t2i, _ = cross_entropy(scale * txt @ gather(img, axis_name).T, labels)",
      "t2i, _ = cross_entropy(scale * img @ gather(txt, axis_name).T, labels)",
      ("tests/test_losses.py",), "text-to-image direction computed as image-to-text"),
    M("shard_offset_zero", "mgca_jax/losses.py",
      "return 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_size",
      "return 0",
      ("tests/test_losses.py",), "positives on the wrong diagonal when the batch is sharded"),
    M("object_same_word_negatives", "mgca_jax/losses.py",
      "allowed = is_pos | (all_valid[None, None, :] & (all_ids[None, None, :] != ids[:, :, None]))",
      "allowed = is_pos | all_valid[None, None, :]",
      ("tests/test_losses.py",), "units with the positive's word count as negatives"),
    M("presence_word_counted_per_unit", "mgca_jax/losses.py",
      "weight = jnp.where(all_valid, 1.0 / jnp.maximum(copies, 1), 0.0)",
      "weight = all_valid.astype(jnp.float32)",
      ("tests/test_losses.py",), "presence term weights a word by how many captions name it"),
    M("presence_margin_sign", "mgca_jax/losses.py",
      "logits = _tau(cfg, \"presence\", out) * (s - float(cfg.presence_margin))",
      "logits = _tau(cfg, \"presence\", out) * (s + float(cfg.presence_margin))",
      ("tests/test_losses.py",), "presence decided at minus the margin"),
    M("region_counts_eos", "mgca_jax/losses.py",
      'wm = (batch["tokens"] > 3).astype(w.dtype)', 'wm = (batch["tokens"] > 2).astype(w.dtype)',
      ("tests/test_losses.py",), "region score averages over the eos token too"),
    M("pixel_same_image_negatives", "mgca_jax/losses.py",
      "allowed = (all_valid[None] & (all_img[None] != jnp.repeat(img, n_anchor)[:, None])",
      "allowed = (all_valid[None]",
      ("tests/test_losses.py",), "pixel term mines negatives from the anchor's own image"),
    M("background_margin_sign", "mgca_jax/losses.py",
      "loss_fg = jax.nn.softplus(scale * (margin - pos))",
      "loss_fg = jax.nn.softplus(scale * (pos - margin))",
      ("tests/test_losses.py",), "object anchors pushed below the background margin"),
    M("kmeans_no_renormalise", "mgca_jax/losses.py",
      'c = l2_normalize(jnp.einsum("bnm,bne->bme", a, p))',
      'c = jnp.einsum("bnm,bne->bme", a, p)',
      ("tests/test_losses.py",), "soft k-means centroids drift off the unit sphere"),
    M("mine_top_k_chunk_offset", "mgca_jax/losses.py",
      "idx = idx + (jnp.arange(n_chunks) * c)[:, None, None]",
      "idx = idx + 0 * (jnp.arange(n_chunks) * c)[:, None, None]",
      ("tests/test_losses.py",), "hard negatives from later key chunks get the wrong index"),
    # --- trainer, sharding, checkpoints
    M("step_rng_not_folded", "mgca_jax/train.py",
      'rng = jax.random.fold_in(rng, state["step"])', "rng = rng",
      ("tests/test_train_step.py",), "every step draws the same anchors"),
    M("weight_decay_on_biases", "mgca_jax/train.py",
      "lambda p: p.ndim > 1, params", "lambda p: p.ndim >= 1, params",
      ("tests/test_train_step.py",), "weight decay also applied to biases, norms and the logit scale"),
    M("last_step_not_saved", "mgca_jax/train.py",
      "if step % config.checkpoint_every == 0 or last:",
      "if step % config.checkpoint_every == 0:",
      ("tests/test_train_step.py::test_last_step_is_saved_off_the_checkpoint_grid",), "the final (or SIGTERM) step is not checkpointed"),
    M("nonfinite_state_saved", "mgca_jax/train.py",
      "faults.check_guard(guard, nonfinite, last_saved)   # never save a NaN state",
      "pass",
      ("tests/test_faults.py::test_nonfinite_loss_stops_without_saving_it",),
      "a non-finite state is checkpointed between log steps"),
    M("skip_step_keeps_update", "mgca_jax/train.py",
      "keep = lambda new, old: jnp.where(finite, new, old)", "keep = lambda new, old: new",
      ("tests/test_faults.py::test_skip_step_drops_the_update_and_counts_it",),
      "skip_step applies the non-finite update anyway"),
    M("stale_lock_blocks", "mgca_jax/faults.py",
      "and not _pid_alive(holder[\"pid\"]):", "and False:",
      ("tests/test_faults.py::test_second_trainer_on_a_workdir_exits_and_stale_lock_does_not_block",),
      "a killed run's lock blocks every restart"),
    M("processes_disagree_on_resume_step", "mgca_jax/faults.py",
      "            if _all_processes_agree(error is None):\n                return state, step",
      "            if error is None:\n                return state, step",
      ("tests/test_faults.py::test_two_processes_agree_on_the_fallback_and_only_process_0_quarantines",),
      "each process resumes from the newest step it alone could read"),
    M("fsdp_shards_nothing", "mgca_jax/sharding.py",
      "            return P(*spec)\n", "            return P()\n",
      ("tests/test_benchmark_scripts.py", "tests/test_train.py::test_fsdp_matches_replicated"),
      "fsdp silently replicates every parameter"),
    M("restore_skips_shape_check", "mgca_jax/checkpoints.py",
      "if tuple(want.shape) != tuple(np.shape(got)):", "if False:",
      ("tests/test_checkpoints.py",), "a checkpoint of another shape loads without error"),
    # --- inference units and protocol
    M("adaptive_outliers_ignored", "mgca_jax/inference.py",
      "outlier = ~agrees & (cos < cfg.outlier_thresh)", "outlier = ~agrees & False",
      ("tests/test_inference.py",), "disagreeing outliers in a coarse segment lose their own label"),
    M("adaptive_agreement_ignored", "mgca_jax/inference.py",
      "agreement = onehot.T @ agrees.astype(p.dtype) / count",
      "agreement = jnp.ones_like(count)",
      ("tests/test_inference.py",), "adaptive unit ignores whether a segment's patches agree"),
    M("pos_embedding_not_resized", "mgca_jax/inference.py",
      "    if (gh, gw) == (side, side):\n        return params\n",
      "    if True:\n        return params\n",
      ("tests/test_inference.py",), "position embedding kept at the training grid"),
    M("window_grid_count", "mgca_jax/evaluation/protocol.py",
      "h_grids = max(h - ch + sh - 1, 0) // sh + 1", "h_grids = max(h - ch, 0) // sh + 1",
      ("tests/test_protocol.py",), "sliding windows miss the bottom rows"),
    M("stitch_no_average", "mgca_jax/evaluation/protocol.py",
      "return acc / jnp.asarray(count)", "return acc",
      ("tests/test_protocol.py",), "overlapping windows summed, not averaged"),
    M("resize_rounding", "mgca_jax/evaluation/protocol.py",
      "return int(h * s + 0.5), int(w * s + 0.5)", "return int(h * s), int(w * s)",
      ("tests/test_protocol.py",), "keep-ratio resize truncates instead of rounding"),
    M("background_after_classes", "mgca_jax/evaluation/protocol.py",
      "x = jnp.concatenate([bg, x], axis=-1)", "x = jnp.concatenate([x, bg], axis=-1)",
      ("tests/test_protocol.py",), "background becomes the last label instead of 0"),
    # --- metrics and evaluation
    M("union_double_counts", "mgca_jax/evaluation/metrics.py",
      "union = area_gt + area_pred - intersection", "union = area_gt + area_pred",
      ("tests/test_metrics.py",), "IoU union counts the intersection twice"),
    M("miou_nan_as_zero", "mgca_jax/evaluation/metrics.py",
      'miou = float(iou[valid].mean()) if valid.any() else math.nan',
      'miou = float(np.nan_to_num(iou).mean()) if valid.any() else math.nan',
      ("tests/test_metrics.py",), "absent classes count as IoU 0 in the mean"),
    M("ignore_index_kept", "mgca_jax/evaluation/metrics.py",
      "keep = gt != ignore_index", "keep = gt != -1",
      ("tests/test_metrics.py",), "ignored pixels are scored"),
    M("bootstrap_interval", "mgca_jax/evaluation/metrics.py",
      '"high": float(np.percentile(diffs, 97.5))', '"high": float(np.percentile(diffs, 95))',
      ("tests/test_metrics.py",), "the 95 % interval's upper end is the 95th percentile"),
    M("zeroshot_no_background_rule", "mgca_jax/inference.py",
      "protocol_config=protocol_config, bg_thresh=bg_thresh, devices=devices,",
      "protocol_config=protocol_config, bg_thresh=None, devices=devices,",
      ("tests/test_inference_zeroshot.py",),
      "the shared predict function (trainer, evaluate, segment, export) drops the background "
      "rule (labels shift by one)"),
    M("failure_speckle_threshold", "mgca_jax/evaluation/failure_modes.py",
      "<= self.speckle_frac * area", "< 0 * area",
      ("tests/test_failure_modes.py",), "speckle never counted"),
    M("no_threshold_labels_unshifted", "mgca_jax/evaluate.py",
      "shift = 1 if job.has_background and bg is None else 0", "shift = 0",
      ("tests/test_inference_zeroshot.py",), "--bg_thresh=none scores class c as label c, one class off"),
    M("embedded_key_follows_eval_split", "mgca_jax/evaluate.py",
      "return EMBEDDED_DATASETS[key] or config.data.eval_split", "return config.data.eval_split",
      ("tests/test_atypical_split.py::test_evaluate_dataset_keys_name_their_splits",),
      "every embedded --dataset key scores the run's eval_split (a tune-trained run's 'validation' is tune)"),
    M("evaluate_ignores_test_scale", "mgca_jax/evaluate.py",
      "defaults = default_protocol(job.train_size, scale) if job.train_size else default_protocol()",
      "defaults = default_protocol(job.train_size) if job.train_size else default_protocol()",
      ("tests/test_atypical_split.py::test_evaluate_and_export_follow_the_runs_test_scale",),
      "evaluate scores the embedded world at the field's scale whatever config.eval.test_scale says"),
    M("test_scale_stride_full_window", "mgca_jax/inference.py",
      "return side, side, max(side // 2, 1)", "return side, side, side",
      ("tests/test_inference_cli.py::test_default_protocol_scales_the_fields_ratios_to_the_training_size",),
      "windows do not overlap: stride equals the window at every test scale"),
    # --- image tower
    M("space_to_depth_block_order", "mgca_jax/models/vit.py",
      "x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)",
      "x = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 4, 2, 5)",
      ("tests/test_models.py",), "hmlp stem reads each 2x2 block's pixels in the wrong order"),
    M("contrast_stem_all_channels", "mgca_jax/models/vit.py",
      "mean, var = pix.mean(axis=3, keepdims=True), pix.var(axis=3, keepdims=True)",
      "mean, var = pix.mean(axis=(3, 4), keepdims=True), pix.var(axis=(3, 4), keepdims=True)",
      ("tests/test_models.py",), "contrast stem standardises a patch's channels together (colour leaks)"),
    M("contrast_stem_eps_not_squared", "mgca_jax/models/vit.py",
      "jax.lax.rsqrt(var + self.eps ** 2)", "jax.lax.rsqrt(var + self.eps)",
      ("tests/test_models.py",), "contrast stem's flat-patch guard 10x too large"),
    # --- data ops
    M("object_mask_drops_word_0", "mgca_jax/data/ops.py",
      'ex["object_mask"] = ids >= 0', 'ex["object_mask"] = ids > 0',
      ("tests/test_input_pipeline.py",), "the lexicon's first word is never an object"),
    M("normalize_std_mean_swapped", "mgca_jax/data/ops.py",
      "offset = tf.constant(-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD), tf.float32)",
      "offset = tf.constant(-np.asarray(IMAGENET_STD) / np.asarray(IMAGENET_MEAN), tf.float32)",
      ("tests/test_ops.py",), "training images normalised with swapped statistics"),
    M("tokenizer_no_eos", "mgca_jax/data/tokenizer.py",
      "return ([BOS] + ids + [EOS] + [PAD] * max_len)[:max_len]",
      "return ([BOS] + ids + [PAD] * max_len)[:max_len]",
      ("tests/test_tokenizer.py",), "python tokenizer drops eos (text pooled at the wrong token)"),
)


def repo_files(root: str) -> list[str]:
    """Tracked files plus untracked, not ignored ones (what a fresh clone with this change holds)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))]


def scratch_copy(root: str, dest: str) -> str:
    for rel in repo_files(root):
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), target)   # keeps mtimes: run.sh sees no change
    venv = os.path.join(root, ".venv")
    if os.path.isdir(venv):
        os.symlink(venv, os.path.join(dest, ".venv"))
    return dest


class SnippetError(ValueError):
    pass


def mutated_text(text: str, mutant: Mutant) -> str:
    n = text.count(mutant.old)
    if n != 1:
        raise SnippetError(f"{mutant.name}: snippet occurs {n} times in {mutant.path}, expected once")
    return text.replace(mutant.old, mutant.new)


def apply(root: str, mutant: Mutant) -> None:
    path = os.path.join(root, mutant.path)
    with open(path) as f:
        text = mutated_text(f.read(), mutant)
    with open(path, "w") as f:
        f.write(text)
    py_compile.compile(path, doraise=True)


def existing_tests(root: str, targets) -> list[str]:
    return [t for t in targets if os.path.exists(os.path.join(root, t.split("::")[0]))]


def run_pytest(root: str, targets, timeout: float) -> tuple[int | None, str, float]:
    env = dict(os.environ, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *targets]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", time.time() - t0
    return proc.returncode, proc.stdout + proc.stderr, time.time() - t0


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return ""


def check_one(mutant: Mutant, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mut_{mutant.name}_") as tmp:
        root = scratch_copy(ROOT, os.path.join(tmp, "repo"))
        apply(root, mutant)
        targets = existing_tests(root, mutant.tests)
        if not targets:
            raise SnippetError(f"{mutant.name}: none of its tests exist: {mutant.tests}")
        code, output, seconds = run_pytest(root, targets, timeout)
    status = "timeout" if code is None else "survived" if code == 0 else "caught"
    return {"name": mutant.name, "status": status, "seconds": round(seconds, 1),
            "caught_by": first_failure(output) if status == "caught" else "",
            "tests": targets, "breaks": mutant.breaks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names (or name prefixes)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    ap.add_argument("--json", default="", help="also write the results here")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        print(f"error: --jobs: expected >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    chosen = list(MUTANTS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        chosen = [m for m in MUTANTS if any(m.name.startswith(w) for w in wanted)]
        if not chosen:
            print(f"error: --only: no mutant matches {args.only!r} (see --list)", file=sys.stderr)
            return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:32s} {m.path:40s} {m.breaks}")
        return 0
    for m in chosen:                       # every snippet must still match before anything runs
        with open(os.path.join(ROOT, m.path)) as f:
            try:
                mutated_text(f.read(), m)
            except SnippetError as e:
                print(f"error: {e} (update MUTANTS)", file=sys.stderr)
                return 2
    if not args.no_baseline:
        targets = sorted({t for m in chosen for t in existing_tests(ROOT, m.tests)})
        print(f"baseline: {len(targets)} test targets on the unmutated copy ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="mut_baseline_") as tmp:
            code, output, seconds = run_pytest(scratch_copy(ROOT, os.path.join(tmp, "repo")),
                                               targets, args.timeout * 2)
        if code != 0:
            print(f"error: baseline: the unmutated tests fail ({first_failure(output) or 'timeout'}); "
                  "mutants would prove nothing", file=sys.stderr)
            return 2
        print(f"baseline passed in {seconds:.0f} s", flush=True)
    results, t0 = [], time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(check_one, m, args.timeout) for m in chosen]
        for i, fut in enumerate(futures, 1):
            r = fut.result()
            results.append(r)
            elapsed = time.time() - t0
            eta = elapsed / i * (len(chosen) - i)
            print(f"[{i}/{len(chosen)}] {r['status']:8s} {r['name']:30s} {r['seconds']:6.1f}s  "
                  f"{r['caught_by']}  (ETA {eta / 60:.1f} min)", flush=True)
    caught = [r for r in results if r["status"] == "caught"]
    survivors = [r for r in results if r["status"] != "caught"]
    print(f"\ncaught {len(caught)}/{len(results)} mutants in {(time.time() - t0) / 60:.1f} min")
    for r in survivors:
        print(f"  {r['status']}: {r['name']} ({r['breaks']}); ran {' '.join(r['tests'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"caught": len(caught), "total": len(results), "results": results}, f, indent=2)
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
