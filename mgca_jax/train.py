"""The trainer: one readable loop around a pure, sharded `train_step`.

  state = {"step", "params", "opt_state"}
  train_step(state, batch, rng) -> (state, metrics)

`train_step` is jitted with explicit in/out shardings over a one-axis "data"
mesh; the loss terms gather negatives across devices inside `jax.shard_map`
(mgca_jax/losses.py). Checkpoints go to WORKDIR/checkpoints through orbax,
which writes each step into a temporary directory and renames it when
complete, so a crash never leaves a checkpoint that gets restored half-written.

The step's pieces (make_optimizer ... jit_train_step) import no TensorFlow or clu: the
data side and the metric writer are imported where the loop needs them, so the step runs
where only jax, flax, optax and orbax are installed (benchmarks/device_step.py).
"""
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp

from mgca_jax import faults, inference, losses, sharding
from mgca_jax.config_check import check_config, check_vocab
from mgca_jax.evaluation import protocol, zeroshot
from mgca_jax.models.two_tower import make_model


def make_optimizer(config):
    """AdamW with linear warm-up and cosine decay; no decay on 1-d params."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, min(config.warmup_steps, config.total_steps - 1), config.total_steps,
        end_value=config.lr * 0.01)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip) if config.grad_clip else optax.identity(),
        optax.adamw(schedule, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask))
    return tx, schedule


def dummy_batch(config, batch_size=1):
    i = config.input
    return {"image": jnp.zeros((batch_size, i.image_size, i.image_size, 3), jnp.float32),
            "tokens": jnp.ones((batch_size, i.max_len), jnp.int32),
            "object_tokens": jnp.ones((batch_size, i.num_objects, i.object_max_len), jnp.int32)}


def abstract_state(model, tx, config):
    def init():
        params = model.init(jax.random.key(config.seed), dummy_batch(config))["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    return init, jax.eval_shape(init)


def make_train_step(model, tx, schedule, config, mesh):
    """The pure step; jit it with `jit_train_step`."""
    with_objects = losses.needs_objects(config.loss)
    skip_nonfinite = config.get("nonfinite", "stop") == "skip_step"

    def loss_fn(params, batch, rng):
        out = model.apply({"params": params}, batch, with_objects=with_objects)
        return losses.total_loss(out, batch, config.loss, mesh, rng)

    def train_step(state, batch, rng):
        rng = jax.random.fold_in(rng, state["step"])
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        if skip_nonfinite:   # drop the whole update; the step counter still moves on
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state["params"])
            opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "lr": schedule(state["step"]),
                   "logit_scale": jnp.minimum(jnp.exp(params["log_logit_scale"]), 100.0)}
        metrics.update({f"loss_{k}": v for k, v in terms.items()})
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

    return train_step, loss_fn


def jit_train_step(train_step, state_shardings, mesh):
    return jax.jit(train_step,
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))


def checkpoint_manager(workdir, config):
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True))


def host_params(params):
    """Params usable by single-host jitted code (gathered from all processes if needed)."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(params, tiled=True)


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)


def _fmt_seconds(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def setup(config):
    """Validated config, builder, tokenizer, model, optimizer, mesh: shared by train and tools."""
    from mgca_jax.data import input_pipeline
    check_config(config, jax.device_count())
    if not config.data_dir:
        config.data_dir = os.path.abspath("data")
        os.makedirs(config.data_dir, exist_ok=True)
    builder = input_pipeline.get_builder(config)
    tokenizer = input_pipeline.get_tokenizer(config, builder)
    check_vocab(config, tokenizer.vocab_size)   # before any step or checkpoint
    if config.model.vocab_size == -1:
        config.model.vocab_size = tokenizer.vocab_size
    return builder, tokenizer


def eval_class_names(config):
    """Class names for zero-shot evaluation: config.eval.class_names or the data set's."""
    from mgca_jax.data import input_pipeline
    if config.eval.class_names:
        return tuple(n.strip() for n in config.eval.class_names.split(","))
    if config.data.name == input_pipeline.EMBEDDED:
        from mgca_jax.data import scenes
        return tuple(scenes.CLASS_NAMES)
    return None


def eval_splits(config, builder):
    """The splits the trainer scores: config.data.eval_split, then, for the embedded
    world, its atypical-colour partner (validation -> validation_atypical, tune ->
    tune_atypical), where only shape tells the class."""
    from mgca_jax.data import input_pipeline
    splits = [config.data.eval_split]
    if config.data.name == input_pipeline.EMBEDDED:
        from mgca_jax.data.scenes_builder import ATYPICAL_PARTNER
        partner = ATYPICAL_PARTNER.get(config.data.eval_split)
        if partner in builder.info.splits:
            splits.append(partner)
    return splits


EVAL_UNIT = "adaptive"      # the method's unit, scored as `python -m mgca_jax.evaluate` does


def eval_protocol(config) -> inference.ProtocolConfig:
    """The model's default protocol (`evaluate --dataset=embedded`'s): config.eval.test_scale
    times the training size."""
    short, crop, stride = inference.config_protocol(config)
    return inference.ProtocolConfig(short_side=short, crop=crop, stride=stride)


def evaluate(config, workdir, model, params, builder, ctx, tokenizer, step, writer):
    """Scores every split of `eval_splits` with the adaptive unit at the default protocol,
    through the predict function the tools use (`inference.make_segmenter`); returns
    config.data.eval_split's result with all of them under "splits"."""
    with jax.set_mesh(None):        # the Segmenter pmaps over local devices, not the train mesh
        return _evaluate(config, workdir, model, params, builder, ctx, tokenizer, step, writer)


def _evaluate(config, workdir, model, params, builder, ctx, tokenizer, step, writer):
    from mgca_jax.data import input_pipeline
    class_names = eval_class_names(config)
    pcfg = eval_protocol(config)
    segmenter = inference.make_segmenter(
        model, jax.device_get(host_params(params)), tokenizer, class_names,   # as a checkpoint reads
        protocol.get_templates(config.eval.templates), config.input.max_len,
        units=(EVAL_UNIT,), protocol_config=pcfg, bg_thresh=config.eval.bg_thresh)
    label_names = ("background",) + tuple(class_names)
    setting = (f"{EVAL_UNIT} unit, protocol short side {pcfg.short_side}, "
               f"windows {pcfg.crop}/{pcfg.stride}")
    results = {}
    for split in eval_splits(config, builder):
        batches = input_pipeline.as_numpy(input_pipeline.eval_dataset(config, builder, ctx, split))
        name = "" if split == config.data.eval_split else f"{split}_"
        grid = os.path.join(workdir, f"segmentation_{name}step{step}.png")
        res = zeroshot.evaluate(segmenter.predict_fn(), batches, label_names,
                                grid_path=grid if jax.process_index() == 0 else None,
                                num_examples=config.eval.num_examples)
        print(f"zero-shot segmentation, {split} split, step {step}, {setting} "
              f"({res['seconds']:.1f}s):\n{res['table']}", flush=True)
        results[split] = res
    main = dict(results[config.data.eval_split], splits=results)
    writer.write_scalars(step, {"eval/miou" if s == config.data.eval_split else f"eval/miou_{s}":
                                r["miou"] for s, r in results.items()})
    writer.write_texts(step, {"eval/per_class_iou": main["table"].replace("\n", "  \n")})
    if jax.process_index() == 0:
        per_split = {s: {"miou": r["miou"], "iou": dict(zip(r["label_names"], map(float, r["iou"])))}
                     for s, r in results.items()}
        # Top-level miou/iou: config.data.eval_split's (what earlier readers expect).
        _write_json(os.path.join(workdir, f"eval_step{step}.json"),
                    {"step": step, **per_split[config.data.eval_split], "splits": per_split,
                     "unit": EVAL_UNIT, "protocol": dataclasses.asdict(pcfg),
                     "bg_thresh": config.eval.bg_thresh})
    return main


def train_and_evaluate(config, workdir):
    """Trains (resuming from WORKDIR if it holds checkpoints) and evaluates. Returns final eval."""
    builder, tokenizer = setup(config)
    os.makedirs(workdir, exist_ok=True)
    model = make_model(config)
    tx, schedule = make_optimizer(config)
    init, abstract = abstract_state(model, tx, config)
    lock = faults.WorkdirLock(workdir)
    lock.acquire()
    try:
        return _train(config, workdir, builder, tokenizer, model, tx, schedule, init, abstract)
    finally:
        lock.release()


def _train(config, workdir, builder, tokenizer, model, tx, schedule, init, abstract):
    from clu import metric_writers

    from mgca_jax.data import input_pipeline
    ctx = input_pipeline.make_context(config, tokenizer)
    mesh = sharding.make_mesh()
    state_sh = sharding.state_shardings(abstract, mesh, config.sharding.params)
    mngr = checkpoint_manager(workdir, config)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
    try:
        state, latest = faults.restore_newest_readable(mngr, target)
    except BaseException:
        mngr.close()
        raise
    if latest is None:
        state = jax.jit(init, out_shardings=state_sh)()
    else:
        print(f"resumed from {mngr.directory}/{latest}", flush=True)
    start = int(state["step"])
    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    print(f"{n_params / 1e6:.2f}M params; {jax.device_count()} devices; "
          f"global batch {config.batch_size}; steps {start}->{config.total_steps}", flush=True)

    train_step, _ = make_train_step(model, tx, schedule, config, mesh)
    step_fn = jit_train_step(train_step, state_sh, mesh)
    batches = input_pipeline.as_numpy(input_pipeline.train_dataset(
        config, builder, ctx, start, jax.process_index(), jax.process_count()))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    rng = jax.random.key(config.seed)
    batch_sh = sharding.batch_sharding(mesh)
    nonfinite = config.get("nonfinite", "stop")
    stop = faults.StopFlag()
    t0, t_last, s_last = time.time(), time.time(), start
    result, in_flight, guard, last_saved = None, None, None, latest
    try:
        with jax.set_mesh(mesh):
            for step in range(start + 1, config.total_steps + 1):
                local = next(batches)
                batch = {k: jax.make_array_from_process_local_data(batch_sh, v) for k, v in local.items()}
                state, metrics = step_fn(state, batch, rng)
                guard = faults.update_guard(guard or faults.new_guard(metrics), metrics, step)
                # At most two steps in flight: a SIGTERM then waits for one step, not a queue.
                jax.block_until_ready(in_flight)
                in_flight = metrics["loss"]
                stopping = stop.should_stop(step)
                last = step == config.total_steps or stopping
                if step % config.log_every == 0 or last:
                    skipped = faults.check_guard(guard, nonfinite, last_saved)
                    metrics = jax.tree.map(float, jax.device_get(metrics))
                    now = time.time()
                    rate = (step - s_last) / max(now - t_last, 1e-9)
                    t_last, s_last = now, step
                    metrics["steps_per_sec"] = rate
                    if nonfinite == "skip_step":
                        metrics["skipped_steps"] = skipped
                    writer.write_scalars(step, metrics)
                    eta = (config.total_steps - step) / max(rate, 1e-9)
                    print(f"step {step}/{config.total_steps}  loss {metrics['loss']:.4f}  "
                          + "  ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items()
                                      if k.startswith("loss_"))
                          + (f"  skipped {skipped}" if skipped else "")
                          + f"  {rate:.2f} steps/s  ETA {_fmt_seconds(eta)}", flush=True)
                if step % config.checkpoint_every == 0 or last:
                    faults.check_guard(guard, nonfinite, last_saved)   # never save a NaN state
                    mngr.save(step, args=ocp.args.StandardSave(state))
                    last_saved = step
                if config.eval.every and step % config.eval.every == 0 and not last:
                    faults.check_guard(guard, nonfinite, last_saved)
                    evaluate(config, workdir, model, state["params"], builder, ctx, tokenizer,
                             step, writer)
                if stopping:
                    mngr.wait_until_finished()
                    print(f"SIGTERM: saved step {step}, exiting", flush=True)
                    return None
            mngr.wait_until_finished()
            print(f"trained {config.total_steps - start} steps in {_fmt_seconds(time.time() - t0)}",
                  flush=True)
            if "mask" in builder.info.features:
                result = evaluate(config, workdir, model, state["params"], builder, ctx, tokenizer,
                                  int(state["step"]), writer)
    finally:
        stop.restore()
        writer.flush()
        mngr.close()
    return result
