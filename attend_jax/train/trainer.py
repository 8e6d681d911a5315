"""The training loop: one function, in sections, for every task.

``train_and_evaluate(config, workdir)`` trains ``config.task`` (``attend_jax.tasks``), evaluates
on the validation split, keeps the best checkpoint by the task's validation metric, stops early,
resumes a killed run exactly, and finally evaluates the best checkpoint on the test split into
``workdir/eval``, after fitting what the task keeps from the validation split (a classifier's
temperature and operating points: ``workdir/calibration.json``). What differs between tasks
(the model, its loss, what evaluation keeps and writes) is the task object's; the loop,
sharding, checkpoints and resume are one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding

from attend_jax import checkpoint, config_check, export, hosts, paths, run, tasks
from attend_jax.data import availability, pipeline, prefetch, records
from attend_jax.eval import calibration as calibration_lib
from attend_jax.models import build
from attend_jax.progress import log
from attend_jax.train import memory, optim, preemption, prediction, sharding
from attend_jax.train.writer import MetricWriter


class TrainingDivergedError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def make_train_step(task: tasks.Task, train_def, tx: optax.GradientTransformation,
                    dropout_key: jax.Array, shardings=None):
  """The jitted update ``(params, stats, opt_state, rngs, step, batch) -> (..., terms)``.

  Parameters, BatchNorm statistics and optimiser state are donated: updated in place. With
  ``shardings`` (those of params, stats, opt_state, rngs and the batch) the step takes its
  inputs in those layouts and returns the state in them: XLA may otherwise choose another for
  some leaves (seen: a replicated bias returned split over fsdp), and the next step would then
  need another executable, and donation could not reuse those buffers.
  """
  compute_dtype = jnp.dtype(task.config.model.dtype)
  schedule = optim.schedule(task.config)

  def train_step(params, stats, opt_state, rngs, step, batch):
    m = nnx.merge(train_def, gathered_as(params, compute_dtype), stats, rngs)
    # Dropout keys come from the seed and the step, so a resumed run draws the same ones.
    nnx.reseed(m, default=jax.random.fold_in(dropout_key, step))

    def loss_fn(m):
      terms = task.loss_terms(m, batch, train=True, step=step)
      return terms["loss"], terms

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (_, terms), grads = grad_fn(m)
    # The gradient of a weight cast to 16 bits before use is the same number in either dtype
    # (a cast's transpose is the cast back): float32 again, as the optimiser keeps them.
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    # Over the trained parameters only: then nothing reads the frozen ones' weight gradients,
    # and XLA drops them (in the paper's setting, 3 blocks and the patch embedding).
    trained = jax.tree.leaves(optim.trainable(task.config, params))
    terms["grad_norm"] = optax.tree.norm(
        [g for g, t in zip(jax.tree.leaves(grads), trained, strict=True) if t])
    terms["lr"] = schedule(step + 1)  # As logged at the step this update completes.
    return params, nnx.state(m, nnx.BatchStat), opt_state, terms

  if shardings is None:
    return jax.jit(train_step, donate_argnums=(0, 1, 2))
  params_s, stats_s, opt_s, rngs_s, batch_s = shardings
  return jax.jit(train_step, donate_argnums=(0, 1, 2),
                 in_shardings=(params_s, stats_s, opt_s, rngs_s, None, batch_s),
                 out_shardings=(params_s, stats_s, opt_s, None))


def gathered_as(params, dtype):
  """``params`` with the ones FSDP shards (the ViT's matmul kernels) cast to the compute
  ``dtype`` where they lie, on each device's shard: the all-gather before each matmul then moves
  16 bits a weight, not 32 (maxtext casts the same way). The layers cast them to ``dtype`` at
  use anyway, so the numbers are the same; without this, XLA gathers the float32 weights first.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if dtype == jnp.float32 or mesh.empty or mesh.shape.get("fsdp", 1) == 1:
    return params

  def cast(p, spec):
    names = {n for entry in spec if entry for n in (entry if isinstance(entry, tuple)
                                                   else (entry,))}
    if "fsdp" not in names or not jnp.issubdtype(p.dtype, jnp.floating):
      return p
    where = sharding.fit_spec(spec, p.shape, mesh)
    return jax.lax.with_sharding_constraint(p.astype(dtype), where)

  return jax.tree.map(cast, params, nnx.get_partition_spec(params))


def _note_non_finite(record, loss, grad_norm, step):
  """``record`` (step, loss, gradient norm) of the first step whose loss or gradient norm was
  not finite (step -1: none yet), updated on device."""
  bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) & (record[0] < 0)
  now = jnp.stack([jnp.asarray(step, jnp.float32), loss.astype(jnp.float32),
                   grad_norm.astype(jnp.float32)])
  return jnp.where(bad, now, record)


def _stop_if_diverged(record, ckpts: checkpoint.Checkpoints, workdir) -> None:
  """Raises TrainingDivergedError, naming the last good checkpoint, if a step went non-finite."""
  # Replicated: every host reads its own copy.
  bad_step, loss, grad_norm = (float(x) for x in np.asarray(record.addressable_data(0)))
  if bad_step < 0:
    return
  ckpts.wait()
  good = ckpts.latest.latest_step()
  kept = (f"the last good checkpoint (step {good}) is in {workdir / checkpoint.LATEST}"
          if good is not None else "no checkpoint had been saved yet")
  ckpts.close()
  what = f"Loss is {loss}" if not np.isfinite(loss) else f"The gradient norm is {grad_norm}"
  raise TrainingDivergedError(
      f"{what} at step {int(bad_step)}; stopped, and {kept}. Lower optim.lr, or check the"
      " data and loss settings, then rerun.")


@dataclasses.dataclass
class State:
  """What the trainer trains, as ``init_state`` lays it out on the mesh: the graphs of the model
  in train and eval mode, its parameters, BatchNorm statistics and RNG state, the optimiser and
  its state. With ``abstract``, ShapeDtypeStructs carrying those shardings."""
  task: tasks.Task
  train_def: Any
  eval_def: Any
  params: Any
  stats: Any
  rngs: Any
  tx: optax.GradientTransformation
  opt_state: Any


def init_state(config, mesh, task: tasks.Task | None = None, abstract: bool = False) -> State:
  """The model built in place in its sharded layout (``config.model.pretrained`` loaded into
  it), and the optimiser state sharded like the parameters; with ``abstract`` nothing is
  allocated (tools/scale_report.py compiles the same layout for a pod on one CPU)."""
  task = task or tasks.get(config)
  if abstract:
    with jax.set_mesh(mesh):
      model = nnx.eval_shape(lambda: task.build_model(config.seed))
  else:
    model = sharding.create_sharded(lambda: task.build_model(config.seed), mesh)
    if config.model.pretrained:
      build.load_pretrained_backbone(model, config.model.pretrained)
  model.train()
  train_def, params, stats, rngs = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  model.eval()
  eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
  if abstract:
    params, stats, rngs = (export.abstract(tree, sharding.state_shardings(tree, mesh))
                           for tree in (params, stats, rngs))
  tx = optim.make(config, params, model.cfg.vit.depth)
  # Moments sharded like their parameters, step counts replicated on the mesh; an explicit
  # layout also makes restores land on the same devices.
  opt_shardings = sharding.opt_state_shardings(tx.init, params, mesh)
  if abstract:
    opt_state = export.abstract(jax.eval_shape(tx.init, params), opt_shardings)
  else:
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  return State(task, train_def, eval_def, params, stats, rngs, tx, opt_state)


def train_step_for(config, state: State, mesh):
  """``make_train_step`` for ``state``, taking and returning it in its layouts, the batch split
  over every device."""
  layouts = jax.tree.map(lambda x: x.sharding, (state.params, state.stats, state.opt_state,
                                                state.rngs))
  return make_train_step(state.task, state.train_def, state.tx,
                         jax.random.key(config.seed + 1),
                         (*layouts, NamedSharding(mesh, sharding.BATCH_SPEC)))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming what is there) and returns the test metrics."""
  config_check.check(config)  # Before anything is written or loaded.
  hosts.maybe_initialize_distributed()
  workdir = paths.path(workdir)  # A local folder or a bucket URL, the same on every host.
  paths.check_reachable(workdir)  # In seconds, naming it, where gcsfs would retry for a minute.
  workdir.mkdir(parents=True, exist_ok=True)
  with run.locked(workdir), preemption.StopSignal(config.train.preemption_grace_s) as stop:
    return _train(config, workdir, stop)


def _train(config, workdir: epath.Path, stop: preemption.StopSignal) -> dict:
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  # Steps traced under the mesh: layers keep activations split over the batch (vit.batch_sharded),
  # so that fsdp gathers weights rather than resharding activations.
  with jax.set_mesh(mesh):
    return _train_on(config, workdir, stop, mesh)


def _train_on(config, workdir: epath.Path, stop: preemption.StopSignal, mesh) -> dict:
  # --- setup and mesh ------------------------------------------------------------------------
  task = tasks.get(config)
  if config.data.batch_size % mesh.size or config.data.eval_batch_size % mesh.size:
    raise ValueError(f"data.batch_size ({config.data.batch_size}) and data.eval_batch_size"
                     f" ({config.data.eval_batch_size}) must be multiples of the {mesh.size}"
                     " devices.")

  # --- input ---------------------------------------------------------------------------------
  availability.ensure_synthetic(config)
  availability.require_for_run(config, ("train", config.data.eval_split))
  # config.json says how the records were made; predict follows.
  availability.record_options(config)
  build.adopt_pretrained(config)  # And how the pretrained backbone resizes its positions.
  run.write_config(workdir, config)

  # --- model and sharding --------------------------------------------------------------------
  state = init_state(config, mesh, task)
  params, stats, rngs, opt_state = state.params, state.stats, state.rngs, state.opt_state

  # --- update and evaluation steps -----------------------------------------------------------
  batch_sharding = NamedSharding(mesh, sharding.BATCH_SPEC)
  train_step = train_step_for(config, state, mesh)
  # A run's batch transform: with proposals.source="detector", its detector's boxes.
  proposal_step = run.load_proposal_step(config, workdir, mesh)
  eval_step = prediction.predict_step(task, state.eval_def, proposal_step=proposal_step)

  # --- memory pre-flight ---------------------------------------------------------------------
  # The step compiled ahead of time from the batch's shapes, before the pipeline reads a batch,
  # so that one that cannot fit is a line here (memory.py); training then runs this executable.
  def compile_at(batch_size: int):
    batch = memory.abstract_batch(config, mesh, batch_size, proposal_step)
    return train_step.lower(params, stats, opt_state, rngs, 0, batch).compile()

  compiled_step = compile_at(config.data.batch_size)
  if config.train.memory_check:
    memory.check(config, mesh, compiled_step, compile_at,
                 memory.budget(config, mesh, (params, stats, opt_state, rngs)))

  # --- checkpoints and resume ----------------------------------------------------------------
  ckpts = checkpoint.Checkpoints(workdir)
  metric = task.selection_metric
  counters = {"best_metric": -1.0, "bad_evals": 0, "stopped_early": False}
  step = 0
  train_iter = iter(pipeline.make_dataset(pipeline.for_split(config, "train", train=True)))
  restored = ckpts.restore_latest({"params": params, "stats": stats, "opt_state": opt_state})
  if restored is not None:
    step, state, counters, data_state = restored
    counters.setdefault("best_metric", counters.pop("best_auc", -1.0))  # Older runs.
    params, stats, opt_state = state["params"], state["stats"], state["opt_state"]
    train_iter.set_state(data_state)
    log("Resumed from step %d in %s", step, workdir)
  # From the step training continues at: rows of steps it trains again are not kept twice.
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, start_step=step)
  writer.parameter_overview(params)

  def current_state():
    return {"params": params, "stats": stats, "opt_state": opt_state}

  # --- evals ---------------------------------------------------------------------------------
  def predict(split: str):
    return prediction.predict_split(functools.partial(eval_step, (params, stats, rngs)),
                                   pipeline.for_split(config, split, train=False), mesh,
                                   task.host_keys)

  # --- loop ----------------------------------------------------------------------------------
  # Steps between the log, eval and checkpoint steps run without any device -> host transfer
  # (the transfer guard raises on one): the loss and gradient norm are checked on device, and
  # the first non-finite step is read where the host syncs anyway, always before a save.
  total = config.train.steps
  replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
  non_finite = jax.device_put(np.array([-1.0, 0.0, 0.0], np.float32), replicated)
  note_non_finite = jax.jit(_note_non_finite, out_shardings=replicated)
  data_state = train_iter.get_state()  # Before the reader thread starts reading ahead.
  inputs = prefetch.DevicePrefetch(train_iter, lambda b: sharding.to_global(b, mesh),
                                   size=config.train.get("prefetch", 2))
  sync_every = config.train.get("host_sync_every", 10)
  start_step, start_time = step, time.perf_counter()
  try:
    while step < total and not counters["stopped_early"]:
      with jax.transfer_guard_device_to_host("disallow"):
        batch, next_state = next(inputs)
        if proposal_step is not None:
          # Laid out as the compiled step takes it, whatever layout the detector's step chose.
          batch = jax.device_put(proposal_step(batch), batch_sharding)
        params, stats, opt_state, terms = compiled_step(params, stats, opt_state, rngs, step,
                                                        batch)
        step += 1
        non_finite = note_non_finite(non_finite, terms["loss"], terms["grad_norm"], step)
      data_state = next_state
      log_now = step % config.train.log_every == 0 or step == total
      eval_now = step % config.train.eval_every == 0 or step == total
      save_now = step % config.train.checkpoint_every == 0 or step == total
      if log_now or eval_now or save_now:
        _stop_if_diverged(non_finite, ckpts, workdir)
      if log_now:
        rate = (step - start_step) / (time.perf_counter() - start_time)
        scalars = {k: float(v) for k, v in terms.items()}
        writer.write(step, "train", scalars)
        log("step %d/%d  loss %.4f  %.2f steps/s  ETA %.0f s", step, total, scalars["loss"],
            rate, (total - step) / max(rate, 1e-9))
      if eval_now:
        val = task.summarize(predict(config.data.eval_split))
        writer.write(step, "val", {k: v for k, v in val.items() if isinstance(v, (int, float))})
        value = val.get(metric)
        if value is None:
          log("The %s split gives no %s (%s); no best checkpoint is chosen from it.",
              config.data.eval_split, metric, task.no_metric_reason())
          value = -1.0
        log("step %d  %s %s %.4f (best so far %.4f)", step, config.data.eval_split, metric,
            value, max(value, counters["best_metric"]))
        if value > counters["best_metric"]:
          counters.update(best_metric=value, bad_evals=0)
          ckpts.save_best(step, current_state(), {f"val_{metric}": value})
        else:
          counters["bad_evals"] += 1
          if counters["bad_evals"] >= config.train.patience:
            counters["stopped_early"] = True
            log("No better validation %s in %d evaluations: stopping early.", metric,
                config.train.patience)
      saved = False
      if save_now or counters["stopped_early"]:
        ckpts.save_latest(step, current_state(), counters, data_state)
        saved = True
      ckpts.check()  # A save that failed in the background is reported now, by its step.
      if stop.requested(agree=log_now or eval_now or save_now or step % sync_every == 0):
        if not saved:
          _stop_if_diverged(non_finite, ckpts, workdir)
          ckpts.save_latest(step, current_state(), counters, data_state)
        ckpts.wait()
        stop.committed()
        ckpts.close()
        writer.close()
        log("Stopped after step %d: its checkpoint is in %s", step, workdir / checkpoint.LATEST)
        raise preemption.Preempted(stop.signum, step, workdir / checkpoint.LATEST)
  finally:
    inputs.close()
  ckpts.wait()

  # --- final evaluation of the best checkpoint ------------------------------------------------
  best = ckpts.restore_best(current_state())
  if best is not None:
    params, stats = best[1]["params"], best[1]["stats"]
  split = config.data.test_split
  if split not in records.splits(config.data.dir, config.data.name):
    log("No %r split in %s; the final evaluation uses %r.", split, config.data.name,
        config.data.eval_split)
    split = config.data.eval_split
  pred = predict(split)
  # Calibration and operating points from the validation split alone, never the test's (a
  # task without them, the detector, predicts nothing more).
  val = None
  if task.calibrates:
    val = pred if split == config.data.eval_split else predict(config.data.eval_split)
  summary = {}
  if jax.process_index() == 0:
    calibration = None if val is None else task.fit_calibration(val, config.data.eval_split)
    if calibration is not None:
      calibration_lib.write(workdir, calibration)
    elif (workdir / calibration_lib.FILE).exists():  # An earlier fit of this workdir's.
      (workdir / calibration_lib.FILE).unlink()
    with paths.staged(workdir / "eval") as out:
      summary = task.write(pred, out, split, calibration=calibration)
    log("%s: %s", split, task.headline(summary))
    log("Wrote %s (report.md, metrics.json)", workdir / "eval")
  ckpts.close()
  writer.close()
  return summary
