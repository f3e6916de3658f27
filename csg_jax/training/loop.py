"""The training loop: a pure `train_step`, and `train_and_evaluate(config, workdir)`.

Steps are `jax.jit`-compiled over a one-axis ("data") mesh of every device: the batch is sharded,
the state replicated. A run on a workdir that holds checkpoints resumes from the newest good one;
the batches it then sees are those the uninterrupted run would have seen (they are a function of
(seed, step)).
"""

import contextlib
import functools
import time
from typing import Any
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from csg_jax import config as config_lib
from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import gate as gate_lib
from csg_jax import methods
from csg_jax import optimizer as optimizer_lib
from csg_jax import sharding
from csg_jax.errors import CSGError
from csg_jax.evaluation.evaluators import TrainingEvaluator
from csg_jax.log import log
from csg_jax.runs import checkpoint as checkpoint_lib
from csg_jax.runs import setup as setup_lib
from csg_jax.runs import state as state_lib
from csg_jax.runs import workdir as workdir_lib
from csg_jax.runs.lock import WorkdirLock
from csg_jax.runs.state import TrainState
from csg_jax.training import memory
from csg_jax.training import preemption
from csg_jax.training.metric_writer import MetricWriter


def draw_key(seed: int, step: jnp.ndarray) -> jax.Array:
  """The key of a step's random draws (methods.DRAWS): a function of (seed, step) only, so a
  resumed run draws what the uninterrupted run drew."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x64726177), step)


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *, model, method,
               tx: optax.GradientTransformation, phase: str, optimizer_name: str, seed: int,
               freeze: str = "") -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimisation step of `phase` (one of the plan's phases), updating one optimiser state.

  The objective is the method's for the phase; the method's own variables (collection `gates`)
  are updated by its transform in `tx`, and its `step_metrics` describe them after the update.
  `freeze` is the optimiser's pattern of trunk layers it leaves unchanged: nothing reads their
  gradients (grad_norm is over the trained layers), so XLA neither computes nor all-reduces them.
  """
  images, labels = batch["image"], batch["label"]

  def loss_fn(trainable):
    variables = {"params": trainable["params"], **({"gates": trainable["gates"]}
                                                   if trainable["gates"] else {})}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    outputs, updated = model.apply(variables, images, labels, train=True,
                                   mutable=["batch_stats"],
                                   rngs={methods.DRAWS: draw_key(seed, state.step)})
    loss, metrics = method.objective(outputs, labels, phase)
    return loss, (metrics, updated.get("batch_stats", {}))

  trainable = state.trainable()
  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state[optimizer_name], trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics["grad_norm"] = jnp.sqrt(sum(
      (jnp.vdot(g, g) for g in optimizer_lib.trained_leaves({"params": grads["params"]}, freeze)),
      jnp.zeros((), jnp.float32)))
  gate = gate_lib.gate_values(trainable["gates"])
  if gate is not None:
    bad = ~jnp.isfinite(gate).all(axis=0)  # filters whose gate column holds NaN or inf
    metrics["gate_finite"] = (~bad.any()).astype(jnp.float32)
    metrics["gate_bad_filter"] = jnp.where(bad.any(), jnp.argmax(bad), -1).astype(jnp.float32)
    metrics.update(method.step_metrics(trainable["gates"], phase))
  new_state = state.replace(step=state.step + 1, params=trainable["params"],
                            gates=trainable["gates"], batch_stats=batch_stats,
                            opt_state={**state.opt_state, optimizer_name: opt_state})
  return new_state, metrics


def make_train_steps(setup: setup_lib.RunSetup) -> dict[str, Callable]:
  """One jit-compiled train step per phase of the plan, sharded over the setup's mesh."""
  repl, data = sharding.replicated(setup.mesh), sharding.batch_sharding(setup.mesh)
  steps = {}
  for phase in setup.plan.phases:
    name = setup.plan.optimizer_of_phase[phase]
    fn = functools.partial(train_step, model=setup.model, method=setup.method,
                           tx=setup.optimizers[name], phase=phase, optimizer_name=name,
                           seed=setup.config.seed, freeze=setup.plan.optimizers[name].freeze)
    steps[phase] = jax.jit(fn, in_shardings=(repl, data), out_shardings=(repl, repl),
                           donate_argnums=0)
  return steps


def compile_train_steps(setup: setup_lib.RunSetup, state) -> dict[str, Callable]:
  """Every phase's train step compiled ahead of the first step for `state` (its abstract
  shapes and shardings suffice) and the global batch; the loop runs these executables, so
  nothing compiles twice. A step whose memory (XLA's analysis) exceeds the device's limit
  (GPU, TPU; CPU reports none) stops the run with one line naming what it needs, what the device
  has and what to change."""
  batch = sharding.abstract_batch(setup.mesh, setup.config.batch_size, setup.image_shape)
  devices = list(setup.mesh.devices.flat)
  capacity = memory.device_memory_bytes([d for d in devices
                                         if d.process_index == jax.process_index()])
  out = {}
  for phase, fn in make_train_steps(setup).items():
    compiled = fn.lower(state, batch).compile()
    memory.check_fits(memory.step_bytes(compiled), capacity, step=f"train ({phase})",
                      device=f"{devices[0].platform}:{devices[0].id}",
                      batch_size=setup.config.batch_size, num_devices=len(devices),
                      dtype=setup.config.model.dtype)
    out[phase] = compiled
  return out


class _Progress:
  """Step, loss, accuracy, images/s and ETA on one line every `log_every_steps`."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int, method):
    self.total, self.batch_size, self.method = total_steps, batch_size, method
    self.last_step, self.last_time = start_step, time.perf_counter()

  def line(self, step: int, means: Mapping[str, float], phase: str) -> str:
    now = time.perf_counter()
    steps = max(step - self.last_step, 1)
    per_step = (now - self.last_time) / steps
    self.last_step, self.last_time = step, now
    eta = per_step * (self.total - step)
    return (f"step {step}/{self.total} [{phase}] loss {means['loss']:.4f} "
            f"{self.method.progress(means, phase)} "
            f"| {self.batch_size / per_step:,.0f} img/s | ETA {eta / 60:.1f} min")


def _check_finite(pending, last_checkpoint: int | None, method) -> None:
  for step, m in pending:
    if not np.isfinite(m["loss"]) or m.get("gate_finite", 1.0) < 1.0:
      what = "loss" if not np.isfinite(m["loss"]) else "gate"
      where = (f"the last good checkpoint is step {last_checkpoint}" if last_checkpoint
               else "no checkpoint was written")
      message = method.nonfinite_message(m, step + 1, where) if what == "gate" else None
      raise CSGError(message or
                     f"non-finite {what} at step {step + 1}; training stopped and no checkpoint "
                     f"was written after it ({where}). Lower the learning rate "
                     "(--config.optimizer.learning_rate) or enable gradient clipping "
                     "(--config.optimizer.grad_clip_norm).")


def _describe_run(setup: setup_lib.RunSetup) -> str:
  config = setup.config
  method = setup.method.describe()
  sizes = ", ".join(f"{len(split)} {role}" for role, split in setup.dataset.splits.items())
  return (f"Training {config.model.name} ({method}) on {setup.dataset.name} ({sizes}): "
          f"{setup.plan.total_steps} steps of {config.batch_size} images on "
          f"{setup.mesh.devices.size} device(s), {jax.process_count()} process(es)")


def train_and_evaluate(config, workdir: str, *,
                       devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the model in `config`, evaluates it, writes results.json; returns it.

  Everything that can be checked is checked before the first file is written.
  """
  config_lib.validate(config)
  workdir_lib.check_trainable(workdir, config)
  # A resumed run normalises with the statistics its first part recorded (not measured again).
  setup = setup_lib.build(config, devices=devices,
                          statistics=workdir_lib.recorded_statistics(workdir))
  abstract = setup.abstract_state()
  # Compiled before anything is written: a step that cannot fit stops the run here.
  train_fns = compile_train_steps(setup, abstract)
  has_checkpoints = any(d.isdigit() for d in fileio.listdir(fileio.join(workdir, "checkpoints")))
  pretrained = (state_lib.load_init_from(config.init_from, config.init_from_skip, abstract)
                if config.init_from and not has_checkpoints else None)

  fileio.makedirs(workdir)
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.checkpoint_every_steps,
                                               keep=config.keep_checkpoints)
    state, start_step = checkpointer.restore_latest(abstract)
    if state is None:
      state = _start(setup, config, workdir, pretrained)
      start_step = 0
    else:
      log(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}")
    return _train(setup, workdir, checkpointer, state, start_step, train_fns)


def _start(setup: setup_lib.RunSetup, config, workdir: str, pretrained) -> TrainState:
  """A fresh state (from init_from's weights when given); config.json and dataset.json.

  config.json is `config` as given (a later run of the same command compares equal to it);
  dataset.json holds what the data set determined, the normalisation statistics included.
  """
  repl = sharding.replicated(setup.mesh)
  init = jax.jit(lambda r: state_lib.create_train_state(setup.model, setup.optimizers,
                                                        setup.dataset.image_shape, r),
                 out_shardings=repl)
  state = init(setup.rng)
  if pretrained:
    state = jax.device_put(state_lib.apply_init_from(state, pretrained, setup.optimizers), repl)
  if jax.process_index() == 0:
    workdir_lib.write_config(workdir, config)
    workdir_lib.write_dataset_record(workdir, setup.dataset)
  log(_describe_run(setup))
  return state


def _train(setup: setup_lib.RunSetup, workdir: str, checkpointer, state: TrainState,
           start_step: int, train_fns: Mapping[str, Callable]) -> dict[str, Any]:
  """Steps from start_step to the end of the plan, then the final evaluation and results.json.

  Evaluation during training uses the 'val' split when the data set has one, so that tuning
  never sees the test split; the test split is evaluated once, at the end.
  """
  config, plan, mesh = setup.config, setup.plan, setup.mesh
  has_val = "val" in setup.dataset.splits
  during = "val" if has_val else "test"
  # Closed (and uploaded) however training ends.
  with MetricWriter(workdir, images=config.tensorboard_images) as writer:
    evaluator = TrainingEvaluator(setup, writer)
    progress = _Progress(plan.total_steps, config.batch_size, start_step, setup.method)
    batches = data_lib.train_batches(setup.dataset, config.data,
                                     global_batch_size=config.batch_size, seed=config.seed,
                                     start_step=start_step, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    last_checkpoint = checkpointer.latest_step()
    # Each optimiser's own step count, which its learning-rate schedules run on (reported).
    rates = optimizer_lib.schedules(config, plan)
    own_steps = {name: 0 for name in plan.optimizers}
    for step in range(start_step):
      own_steps[plan.optimizer_of_phase[plan.phase(step)]] += 1
    pending = []
    notes = setup.method.notes(setup.dataset.num_classes, setup.model.num_filters)
    for note in notes:
      log(note)
    closed_noted = bool(notes)
    in_flight = None
    try:
      with preemption.PreemptionWatcher() as watcher:
        for step in range(start_step, plan.total_steps):
          phase = plan.phase(step)
          state, step_metrics = train_fns[phase](state, sharding.to_global(next(batches), mesh))
          # At most two steps in flight: this one, queued, while the previous one finishes.
          # Dispatch never runs far ahead of the device, so a stop signal (preemption gives
          # about 30 s) checkpoints within a step or two, not after a queue of steps.
          if in_flight is not None:
            jax.block_until_ready(in_flight)
          in_flight = step_metrics
          pending.append((step, step_metrics))
          optimizer_name = plan.optimizer_of_phase[phase]
          own_step = own_steps[optimizer_name]
          own_steps[optimizer_name] += 1
          done = step + 1
          log_now = done % config.log_every_steps == 0
          stop = watcher.should_stop(done, sync_boundary=log_now)
          save_now = stop or done == plan.total_steps or (
              config.checkpoint_every_steps > 0 and done % config.checkpoint_every_steps == 0)
          if save_now or log_now:
            pending = jax.device_get(pending)
            # never checkpoint a non-finite state
            _check_finite(pending, last_checkpoint, setup.method)
            # Losses and accuracies: means over the steps since the last row. The gate's
            # density and hinge describe the state: their values after the logged step.
            means = {k: float(v if k in setup.method.STATE_METRICS else
                              np.mean([m[k] for _, m in pending if k in m]))
                     for k, v in pending[-1][1].items()
                     if k not in ("gate_finite", "gate_bad_filter")}
            # The rates the logged step used: its optimiser's trunk rate and, if it trains G,
            # G's.
            schedule = rates[optimizer_name]
            means["learning_rate"] = float(schedule["trunk"](own_step))
            if schedule["gate"] is not None:
              means["gate_learning_rate"] = float(schedule["gate"](own_step))
            # One tag for single-phase runs, so STD and joint CSG curves overlay in TensorBoard.
            writer.write(done, "train" if len(plan.phases) == 1 else f"train_{phase}", means)
            if log_now or stop or done == plan.total_steps:  # not at checkpoint-only steps
              log(progress.line(done, means, phase))
            if means.get("gate_closed", 0) > 0 and not closed_noted:
              closed_noted = True
              log(f"note: {int(means['gate_closed'])} of {setup.model.num_filters} filters "
                  f"are closed at step {done} (their gate column is all zero: they serve no "
                  "class, and evaluation counts them apart)")
            pending = []
          if save_now and checkpointer.maybe_save(done, state,
                                                  force=stop or done == plan.total_steps):
            last_checkpoint = done
            writer.flush()  # metrics as far as the checkpoint (uploaded, on an object store)
          if stop:
            raise preemption.Preempted(
                f"stopped by {watcher.signal_name} after step {done}; checkpoint saved in "
                f"{fileio.join(checkpointer.directory, str(last_checkpoint))}. Run the same "
                "command again to resume.")
          if (config.eval_every_steps > 0 and done % config.eval_every_steps == 0
              and done < plan.total_steps):
            summary = evaluator.evaluate(state, during, done)
            evaluator.write_gate(state, done)
            log(f"  {during} eval at step {done}: accuracy {summary['accuracy']:.4f} "
                f"MIS {summary['mis']:.4f}")
    finally:
      checkpointer.close()

    if has_val:
      val = evaluator.evaluate(state, "val", plan.total_steps)
    summary = evaluator.evaluate(state, "test", plan.total_steps)
    evaluator.write_gate(state, plan.total_steps)
    evaluator.finish(state, plan.total_steps, summary["mi_matrix"],
                     atlas_filters=config.tensorboard_atlas_filters)
  results = {"method": config.method, "dataset": setup.dataset.name, "model": config.model.name,
             "step": int(jax.device_get(state.step)), "accuracy": summary["accuracy"],
             "mis": summary["mis"], "gate_density": summary["gate_density"]}
  if has_val:  # what to tune on
    results.update(val_accuracy=val["accuracy"], val_mis=val["mis"])
  if jax.process_index() == 0:
    workdir_lib.write_results(workdir, results)
  return results
