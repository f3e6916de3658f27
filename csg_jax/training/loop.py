"""The training loop: a pure `train_step`, and `train_and_evaluate(config, workdir)`.

Steps are `jax.jit`-compiled over a one-axis ("data") mesh of every device: the batch is sharded,
the state replicated. A run on a workdir that holds checkpoints resumes from the newest good one;
the batches it then sees are those the uninterrupted run would have seen (they are a function of
(seed, step)).
"""

import contextlib
import functools
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from csg_jax import config as config_lib
from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import gate as gate_lib
from csg_jax import losses
from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import predict
from csg_jax.log import log
from csg_jax.training import checkpoint as checkpoint_lib
from csg_jax.training import parallel
from csg_jax.training import preemption
from csg_jax.training import run as run_lib
from csg_jax.training import state as state_lib
from csg_jax.training import workdir_lock
from csg_jax.training.metric_writer import MetricWriter
from csg_jax.training.state import TrainState


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *, model,
               tx: optax.GradientTransformation, phase: str, optimizer_name: str,
               gated_loss_weight: float, target_density: float
               ) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One optimisation step of `phase` ("std", "joint" or "csg"), updating one optimiser state.

  The gate's sparsity term is applied by its optax transform (in `tx`), not by the loss; the
  logged `hinge` and `gate_density` are those of G after this step's update and projection.
  """
  images, labels = batch["image"], batch["label"]
  gated = phase != "std"

  def loss_fn(trainable):
    variables = {"params": trainable["params"], **({"gates": trainable["gates"]}
                                                   if trainable["gates"] else {})}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    outputs, updated = model.apply(variables, images, labels if gated else None, train=True,
                                   mutable=["batch_stats"])
    loss, metrics = losses.objective(outputs, labels, phase,
                                     gated_loss_weight=gated_loss_weight)
    return loss, (metrics, updated.get("batch_stats", {}))

  trainable = state.trainable()
  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state[optimizer_name], trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(
      grads["params"])))
  gate = gate_lib.gate_values(trainable["gates"])
  if gate is not None:
    metrics["gate_finite"] = jnp.isfinite(gate).all().astype(jnp.float32)
    if gated:
      metrics["hinge"] = gate_lib.sparsity_hinge(gate, target_density)
      metrics["gate_density"] = gate_lib.l1_density(gate)
  new_state = state.replace(step=state.step + 1, params=trainable["params"],
                            gates=trainable["gates"], batch_stats=batch_stats,
                            opt_state={**state.opt_state, optimizer_name: opt_state})
  return new_state, metrics


def make_train_steps(setup: run_lib.RunSetup) -> Dict[str, Callable]:
  """One jit-compiled train step per phase of the plan, sharded over the setup's mesh."""
  repl, data = parallel.replicated(setup.mesh), parallel.batch_sharding(setup.mesh)
  csg = setup.config.csg
  steps = {}
  for phase in setup.plan.phases:
    name = setup.plan.optimizer_of_phase[phase]
    fn = functools.partial(train_step, model=setup.model, tx=setup.optimizers[name], phase=phase,
                           optimizer_name=name, gated_loss_weight=csg.gated_loss_weight,
                           target_density=csg.gate.target_density)
    steps[phase] = jax.jit(fn, in_shardings=(repl, data), out_shardings=(repl, repl),
                           donate_argnums=0)
  return steps


_STATE_METRICS = ("gate_density", "hinge")


class _Progress:
  """Step, loss, accuracy, images/s and ETA on one line every `log_every_steps`."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total, self.batch_size = total_steps, batch_size
    self.last_step, self.last_time = start_step, time.perf_counter()

  def line(self, step: int, means: Mapping[str, float], phase: str) -> str:
    now = time.perf_counter()
    steps = max(step - self.last_step, 1)
    per_step = (now - self.last_time) / steps
    self.last_step, self.last_time = step, now
    eta = per_step * (self.total - step)
    acc = means.get("accuracy_csg" if phase == "csg" else "accuracy", float("nan"))
    extra = f" density {means['gate_density']:.3f}" if "gate_density" in means else ""
    return (f"step {step}/{self.total} [{phase}] loss {means['loss']:.4f} acc {acc:.3f}{extra} "
            f"| {self.batch_size / per_step:,.0f} img/s | ETA {eta / 60:.1f} min")


def _check_finite(pending, last_checkpoint: Optional[int]) -> None:
  for step, m in pending:
    if not np.isfinite(m["loss"]) or m.get("gate_finite", 1.0) < 1.0:
      what = "loss" if not np.isfinite(m["loss"]) else "gate"
      where = (f"the last good checkpoint is step {last_checkpoint}" if last_checkpoint
               else "no checkpoint was written")
      raise CSGError(f"non-finite {what} at step {step + 1}; training stopped and no checkpoint "
                     f"was written after it ({where}). Lower the learning rate "
                     "(--config.optimizer.learning_rate) or enable gradient clipping "
                     "(--config.optimizer.grad_clip_norm).")


def _split_sizes(dataset: data_lib.Dataset) -> Dict[str, int]:
  return {role: len(split) for role, split in dataset.splits.items()}


def _describe_run(setup: run_lib.RunSetup) -> str:
  config = setup.config
  method = config.method + (f"/{config.csg.schedule}" if config.method == "csg" else "")
  sizes = ", ".join(f"{n} {role}" for role, n in _split_sizes(setup.dataset).items())
  return (f"Training {config.model.name} ({method}) on {setup.dataset.name} ({sizes}): "
          f"{setup.plan.total_steps} steps of {config.batch_size} images on "
          f"{setup.mesh.devices.size} device(s), {jax.process_count()} process(es)")


def _show(value) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def finished_run(workdir: str, config) -> Optional[Dict[str, Any]]:
  """The results.json of a finished run of `config` in `workdir`, or None when the workdir is
  new or holds an unfinished run of it. A run of another config there is a CSGError naming the
  differing fields, raised before anything is loaded."""
  config_path = fileio.join(workdir, "config.json")
  if not fileio.exists(config_path):
    return None
  changes = config_lib.result_changes(fileio.read_json(config_path), config.to_dict())
  if changes:
    listed = ", ".join(f"{k} {_show(old)} -> {_show(new)}" for k, old, new in changes[:4])
    raise CSGError(
        f"{workdir} holds a run of another config ({listed}"
        f"{f' and {len(changes) - 4} more' if len(changes) > 4 else ''}); train in another "
        "--workdir (left out, the default name includes your overrides), or delete "
        f"{workdir} to start over")
  results_path = fileio.join(workdir, "results.json")
  return fileio.read_json(results_path) if fileio.exists(results_path) else None


def _scalars(summary: Mapping[str, Any]) -> Dict[str, float]:
  return {k: v for k, v in summary.items() if isinstance(v, float)}


def _evaluate(setup: run_lib.RunSetup, eval_fn, state: TrainState, split: str,
              writer: MetricWriter, step: int) -> Dict[str, Any]:
  """Evaluates `split` and writes its scalars, and its MI matrix as a TensorBoard image (on the
  labels' MI ceiling, the scale of csg-evaluate's figure), at `step`."""
  result = predict.evaluate(eval_fn, state, setup.dataset, setup.config, setup.mesh, split)
  summary = predict.summarize_eval(result, setup.dataset.num_classes, state.host_gate(),
                                   setup.config.seed)
  writer.write(step, split, _scalars(summary))
  if writer.images:  # rendering costs a fraction of a second: at evaluations only
    from csg_jax.evaluation import plots  # pylint: disable=g-import-not-at-top  (matplotlib)
    writer.write_image(step, f"{split}/mi_matrix", plots.matrix_image(
        summary["mi_matrix"], setup.dataset.class_names, colorbar_label="nats",
        vmax=mis_lib.mi_ceiling(result["label"], setup.dataset.num_classes),
        title=f"MI(filter; class) on {split} at step {step}, MIS {summary['mis']:.3f}"))
  return summary


def _write_gate(setup: run_lib.RunSetup, state: TrainState, writer: MetricWriter,
                step: int) -> None:
  """The gate G as a TensorBoard image on the fixed scale [0, 1] (classes x filters, filters
  sorted by class; when the writer draws images); each class's number of filters by G's argmax,
  `filters_per_class/<name>`, counting open filters only, and `gate/closed_filters`, whose column
  is all zero (the argmax of such a column is class 0 by convention, not a class the filter
  serves). Nothing for a run without a gate."""
  gate = state.host_gate()
  if gate is None or not writer.enabled:
    return
  names = setup.dataset.class_names
  if writer.images:
    from csg_jax.evaluation import plots  # pylint: disable=g-import-not-at-top  (matplotlib)
    writer.write_image(step, "gate", plots.matrix_image(
        gate, names, vmax=1.0, colorbar_label="gate value", cmap="magma",
        title=f"gate G at step {step}, L1 density {float(gate_lib.l1_density(gate)):.3f}"))
  is_open = gate.max(axis=0) > 0
  counts = mis_lib.filters_per_class(mis_lib.assigned_class_from_gate(gate)[is_open], len(names))
  writer.write_tensorboard_scalars(step, {
      **{f"filters_per_class/{name}": count for name, count in zip(names, counts)},
      "gate/closed_filters": int((~is_open).sum())})


def train_and_evaluate(config, workdir: str, *,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, Any]:
  """Trains (or resumes) the model in `config`, evaluates it, writes results.json; returns it.

  Everything that can be checked is checked before the first file is written.
  """
  config_lib.validate(config)
  results = finished_run(workdir, config)
  if results is not None:
    raise CSGError(
        f"{workdir} holds a finished run (step {results['step']}: accuracy "
        f"{results['accuracy']:.4f}, MIS {results['mis']:.4f}); evaluate it with "
        f"`python launch/evaluate.py --workdir {workdir}`, or train again in another --workdir "
        f"(or delete {workdir})")
  setup = run_lib.build(config, devices=devices)
  abstract = setup.abstract_state()
  has_checkpoints = any(d.isdigit() for d in fileio.listdir(fileio.join(workdir, "checkpoints")))
  pretrained = (state_lib.load_init_from(config.init_from, config.init_from_skip, abstract)
                if config.init_from and not has_checkpoints else None)

  fileio.makedirs(workdir)
  lock = (workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock:
    checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.checkpoint_every_steps,
                                               keep=config.keep_checkpoints)
    state, start_step = checkpointer.restore_latest(abstract)
    if state is None:
      state = _start(setup, config, workdir, pretrained)
      start_step = 0
    else:
      log(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}")
    return _train(setup, workdir, checkpointer, state, start_step)


def _start(setup: run_lib.RunSetup, config, workdir: str, pretrained) -> TrainState:
  """A fresh state (from init_from's weights when given); config.json and dataset.json.

  config.json is `config` as given (a later run of the same command compares equal to it);
  dataset.json holds what the data set determined, the normalisation statistics included.
  """
  repl = parallel.replicated(setup.mesh)
  init = jax.jit(lambda r: state_lib.create_train_state(setup.model, setup.optimizers,
                                                        setup.dataset.image_shape, r),
                 out_shardings=repl)
  state = init(setup.rng)
  if pretrained:
    state = jax.device_put(state_lib.apply_init_from(state, pretrained, setup.optimizers), repl)
  if jax.process_index() == 0:
    dataset = setup.dataset
    fileio.write_json_atomic(fileio.join(workdir, "config.json"), config.to_dict())
    fileio.write_json_atomic(fileio.join(workdir, "dataset.json"),
                             {"name": dataset.name, "class_names": list(dataset.class_names),
                              "image_shape": list(dataset.image_shape),
                              "split_sizes": _split_sizes(dataset),
                              "mean": list(setup.config.data.mean),
                              "std": list(setup.config.data.std)})
  log(_describe_run(setup))
  return state


def _train(setup: run_lib.RunSetup, workdir: str, checkpointer, state: TrainState,
           start_step: int) -> Dict[str, Any]:
  """Steps from start_step to the end of the plan, then the final evaluation and results.json.

  Evaluation during training uses the 'val' split when the data set has one, so that tuning
  never sees the test split; the test split is evaluated once, at the end.
  """
  config, plan, mesh = setup.config, setup.plan, setup.mesh
  has_val = "val" in setup.dataset.splits
  during = "val" if has_val else "test"
  train_fns, eval_fn = make_train_steps(setup), predict.make_eval_fn(setup.model, mesh)
  # Closed (and uploaded) however training ends.
  with MetricWriter(workdir, images=config.tensorboard_images) as writer:
    progress = _Progress(plan.total_steps, config.batch_size, start_step)
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
    try:
      with preemption.PreemptionWatcher() as watcher:
        for step in range(start_step, plan.total_steps):
          phase = plan.phase(step)
          state, step_metrics = train_fns[phase](state, parallel.to_global(next(batches), mesh))
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
            _check_finite(pending, last_checkpoint)  # never checkpoint a non-finite state
            # Losses and accuracies: means over the steps since the last row. The gate's
            # density and hinge describe the state: their values after the logged step.
            means = {k: float(v if k in _STATE_METRICS else
                              np.mean([m[k] for _, m in pending if k in m]))
                     for k, v in pending[-1][1].items() if k != "gate_finite"}
            # The rates the logged step used: its optimiser's trunk rate and, if it trains G,
            # G's.
            schedule = rates[optimizer_name]
            means["learning_rate"] = float(schedule["trunk"](own_step))
            if schedule["gate"] is not None:
              means["gate_learning_rate"] = float(schedule["gate"](own_step))
            # One tag for single-phase runs, so STD and joint CSG curves overlay in TensorBoard.
            writer.write(done, "train" if len(plan.phases) == 1 else f"train_{phase}", means)
            log(progress.line(done, means, phase))
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
            summary = _evaluate(setup, eval_fn, state, during, writer, done)
            _write_gate(setup, state, writer, done)
            log(f"  {during} eval at step {done}: accuracy {summary['accuracy']:.4f} "
                f"MIS {summary['mis']:.4f}")
    finally:
      checkpointer.close()

    if has_val:
      val = _evaluate(setup, eval_fn, state, "val", writer, plan.total_steps)
    summary = _evaluate(setup, eval_fn, state, "test", writer, plan.total_steps)
    _write_gate(setup, state, writer, plan.total_steps)
    if writer.images:
      from csg_jax.evaluation import report  # pylint: disable=g-import-not-at-top  (cycle)
      report.final_figures_to_tensorboard(
          run_lib.TrainedRun(setup, state, plan.total_steps), writer, summary["mi_matrix"],
          atlas_filters=config.tensorboard_atlas_filters)
  results = {"method": config.method, "dataset": setup.dataset.name, "model": config.model.name,
             "step": int(jax.device_get(state.step)), "accuracy": summary["accuracy"],
             "mis": summary["mis"], "gate_density": summary["gate_density"]}
  if has_val:  # what to tune on
    results.update(val_accuracy=val["accuracy"], val_mis=val["mis"])
  if jax.process_index() == 0:
    fileio.write_json_atomic(fileio.join(workdir, "results.json"), results)
  return results


def summary_line(results: Mapping[str, Any], workdir: str) -> str:
  """The closing line of a run: method, model, data, step, accuracy, MIS, density (and the
  validation split's accuracy and MIS, when it has one), results path."""
  density = results["gate_density"]
  density = "n/a (std)" if density is None else f"{density:.4f}"
  val = (f"; val accuracy {results['val_accuracy']:.4f}, MIS {results['val_mis']:.4f}"
         if "val_accuracy" in results else "")
  return (f"done: {results['method']} {results['model']} on {results['dataset']} after step "
          f"{results['step']}: accuracy {results['accuracy']:.4f}, MIS {results['mis']:.4f}, "
          f"gate L1 density {density}{val}; results in {fileio.join(workdir, 'results.json')}")
