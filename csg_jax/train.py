"""The training loop: pure `train_step`/`eval_step`, and `train_and_evaluate(config, workdir)`.

Steps are `jax.jit`-compiled over a one-axis ("data") mesh of every device: the batch is sharded,
the state replicated. A run on a workdir that holds checkpoints resumes from the newest good one;
the batches it then sees are those the uninterrupted run would have seen (they are a function of
(seed, step)).
"""

import contextlib
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from csg_jax import checkpoint as checkpoint_lib
from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import gate as gate_lib
from csg_jax import losses
from csg_jax import metrics as metrics_lib
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax import parallel
from csg_jax import preemption
from csg_jax import schedule
from csg_jax import workdir_lock
from csg_jax.errors import CSGError
from csg_jax.metric_writer import MetricWriter


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  gates: Any  # the `gates` collection; {} for a model without a gate
  batch_stats: Any
  opt_state: Dict[str, Any]  # one optimiser state per phase optimiser ("main" or "std"/"csg")

  def variables(self) -> Dict[str, Any]:
    out = {"params": self.params, "batch_stats": self.batch_stats, "gates": self.gates}
    return {k: v for k, v in out.items() if v}

  def gate_matrix(self) -> Optional[jnp.ndarray]:
    return gate_lib.gate_values(self.gates)

  def host_gate(self) -> Optional[np.ndarray]:
    """G as a numpy array on the host, or None for a model without a gate."""
    gate = self.gate_matrix()
    return None if gate is None else np.asarray(jax.device_get(gate))


def create_train_state(model: models.CSGClassifier,
                       optimizers: Mapping[str, optax.GradientTransformation],
                       image_shape: Sequence[int], rng: jax.Array) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables["params"]
  gates = variables.get(gate_lib.GATE_COLLECTION, {})
  trainable = {"params": params, "gates": gates}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, gates=gates,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state={name: tx.init(trainable) for name, tx in optimizers.items()})


def train_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *,
               model: models.CSGClassifier, tx: optax.GradientTransformation, phase: str,
               optimizer_name: str, csg_config) -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One optimisation step of `phase` ("std", "joint" or "csg"), updating one optimiser state."""
  images, labels = batch["image"], batch["label"]
  gated = phase != "std"

  def loss_fn(trainable):
    variables = {"params": trainable["params"], **({"gates": trainable["gates"]}
                                                   if trainable["gates"] else {})}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    outputs, updated = model.apply(variables, images, labels if gated else None, train=True,
                                   mutable=["batch_stats"])
    gate = gate_lib.gate_values(trainable["gates"])
    loss, metrics = losses.objective(outputs, labels, gate, phase, csg_config)
    return loss, (metrics, updated.get("batch_stats", {}))

  trainable = {"params": state.params, "gates": state.gates}
  grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(trainable)
  updates, opt_state = tx.update(grads, state.opt_state[optimizer_name], trainable)
  trainable = optax.apply_updates(trainable, updates)
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree_util.tree_leaves(
      grads["params"])))
  gate = gate_lib.gate_values(trainable["gates"])
  if gate is not None:
    metrics["gate_finite"] = jnp.isfinite(gate).all().astype(jnp.float32)
  new_state = state.replace(step=state.step + 1, params=trainable["params"],
                            gates=trainable["gates"], batch_stats=batch_stats,
                            opt_state={**state.opt_state, optimizer_name: opt_state})
  return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jnp.ndarray], *,
              model: models.CSGClassifier) -> Dict[str, jnp.ndarray]:
  """STD-path predictions and pooled features (the features MIS is measured on).

  Labels and the padding mask pass through, so the host sees the whole global batch.
  """
  outputs = model.apply(state.variables(), batch["image"], train=False)
  return {"prediction": outputs["logits"].argmax(-1), "features": outputs["features"],
          "label": batch["label"], "mask": batch["mask"]}


def make_step_fns(model, optimizers, config, mesh) -> Tuple[Dict[str, Callable], Callable]:
  """jit-compiled train steps (one per phase in use) and the eval step, sharded over `mesh`."""
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  phases = {"std": ("std",), "csg": ("joint",) if config.csg.schedule == "joint"
            else ("std", "csg")}[config.method]
  train_fns = {}
  for phase in phases:
    fn = functools.partial(train_step, model=model, phase=phase, csg_config=config.csg,
                           optimizer_name=schedule.optimizer_of_phase(phase, config),
                           tx=optimizers[schedule.optimizer_of_phase(phase, config)])
    train_fns[phase] = jax.jit(fn, in_shardings=(repl, data), out_shardings=(repl, repl),
                               donate_argnums=0)
  return train_fns, make_eval_fn(model, mesh)


def make_eval_fn(model, mesh) -> Callable:
  return jax.jit(functools.partial(eval_step, model=model),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def evaluate(eval_fn, state, dataset, config, mesh, split: str = "test") -> Dict[str, Any]:
  """Runs the STD path over every example of `split` once; returns predictions and features."""
  chunks = []
  for batch in data_lib.eval_batches(dataset, config.data, split=split,
                                     global_batch_size=config.eval_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    out = jax.device_get(eval_fn(state, parallel.to_global(batch, mesh)))
    keep = np.asarray(out.pop("mask"), bool)
    chunks.append({k: np.asarray(v)[keep] for k, v in out.items()})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def summarize_eval(result: Mapping[str, np.ndarray], num_classes: int, gate: Optional[np.ndarray],
                   seed: int) -> Dict[str, Any]:
  """Accuracy, per-class accuracy, the MI matrix [C, K], MIS and gate density of an evaluation."""
  pred, labels = result["prediction"], result["label"]
  per_class = [float((pred[labels == c] == c).mean()) if (labels == c).any() else None
               for c in range(num_classes)]
  mi = metrics_lib.mutual_information_matrix(result["features"], labels, num_classes, seed=seed)
  return {
      "accuracy": float((pred == labels).mean()),
      "per_class_accuracy": per_class,
      "mi_matrix": mi,
      "mis": float(metrics_lib.mis(mi)),
      "gate_density": None if gate is None else float(gate_lib.l1_density(gate)),
      "num_examples": int(labels.size),
  }


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


def _init_from(path: str, skip_pattern: str, template: TrainState) -> Dict[str, Any]:
  """Weights of another run for fine-tuning: params, batch stats and (if shapes match) gates.

  Every parameter of this model must be in the other run's checkpoint with the same shape,
  except those matched by `skip_pattern` (e.g. "^head/" for a new number of classes), which keep
  their fresh initialisation.
  """
  tree, source = checkpoint_lib.load_pytree(path)
  skip = optimizer_lib.compile_freeze_pattern(skip_pattern)
  problems, loaded = [], {}
  for collection in ("params", "batch_stats", "gates"):
    ours = traverse_util.flatten_dict(getattr(template, collection) or {}, sep="/")
    theirs = traverse_util.flatten_dict(tree.get(collection) or {}, sep="/")
    if collection == "gates":
      if not ours or set(ours) != set(theirs) or any(
          ours[k].shape != theirs[k].shape for k in ours):
        continue  # a gate is only carried over when it fits as is; else it starts fresh
    out = {}
    for name, leaf in ours.items():
      if skip is not None and skip.search(name):
        continue
      if name not in theirs:
        problems.append(f"{collection}/{name} is missing from the checkpoint")
      elif tuple(theirs[name].shape) != tuple(leaf.shape):
        problems.append(f"{collection}/{name}: checkpoint {tuple(theirs[name].shape)} vs "
                        f"model {tuple(leaf.shape)}")
      else:
        out[name] = np.asarray(theirs[name], leaf.dtype)
    loaded[collection] = out
  if problems:
    raise CSGError(f"config.init_from={path!r} does not fit this model ({len(problems)} "
                   f"parameters): {'; '.join(problems[:6])}"
                   f"{' ...' if len(problems) > 6 else ''}. Skip them with "
                   "--config.init_from_skip=<regex>, e.g. '^head/' for a new class count.")
  parallel.print_main(f"Initialising from {source}: {sum(len(v) for v in loaded.values())} "
                      f"arrays{' (gate included)' if 'gates' in loaded else ''}")
  return loaded


def _apply_init_from(state: TrainState, loaded: Mapping[str, Mapping[str, np.ndarray]],
                     optimizers) -> TrainState:
  updated = {}
  for collection, arrays in loaded.items():
    flat = traverse_util.flatten_dict(getattr(state, collection), sep="/")
    flat.update({k: jnp.asarray(v) for k, v in arrays.items()})
    updated[collection] = traverse_util.unflatten_dict(flat, sep="/")
  state = state.replace(**updated)
  trainable = {"params": state.params, "gates": state.gates}
  return state.replace(opt_state={name: tx.init(trainable) for name, tx in optimizers.items()})


def _describe_run(config, dataset, total_steps: int, mesh) -> str:
  method = config.method + (f"/{config.csg.schedule}" if config.method == "csg" else "")
  return (f"Training {config.model.name} ({method}) on {dataset.name}: {total_steps} steps of "
          f"{config.batch_size} images on {mesh.devices.size} device(s), "
          f"{jax.process_count()} process(es)")


def _config_changes(workdir: str, config) -> Sequence[str]:
  """Fields that differ from the config the workdir was started with."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    before = traverse_util.flatten_dict(json.load(f), sep=".")
  now = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
  return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def train_and_evaluate(config, workdir: str, *,
                       devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, Any]:
  """Trains (or resumes) the model in `config`, evaluates it, writes results.json; returns it.

  Everything that can be checked is checked before the first file is written.
  """
  from csg_jax import config_validation  # pylint: disable=g-import-not-at-top
  config_validation.validate(config)
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  dataset = data_lib.load_dataset(config.data)
  num_train = len(dataset.splits["train"])
  model = models.build_model(config.model, dataset.num_classes, use_gate=config.method == "csg",
                             gate_init=config.csg.gate_init)
  optimizers = optimizer_lib.make_optimizers(config, schedule.steps_per_optimizer(config,
                                                                                  num_train))
  rng = jax.random.PRNGKey(config.seed)
  abstract = _abstract_state(model, optimizers, dataset, rng, parallel.replicated(mesh))
  has_checkpoints = os.path.isdir(os.path.join(workdir, "checkpoints")) and any(
      d.isdigit() for d in os.listdir(os.path.join(workdir, "checkpoints")))
  pretrained = (_init_from(config.init_from, config.init_from_skip, abstract)
                if config.init_from and not has_checkpoints else None)

  os.makedirs(workdir, exist_ok=True)
  lock = (workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  with lock:
    return _train_locked(config, workdir, mesh, dataset, model, optimizers, abstract, rng,
                         pretrained)


def _train_locked(config, workdir, mesh, dataset, model, optimizers, abstract, rng, pretrained):
  is_main = jax.process_index() == 0
  num_train = len(dataset.splits["train"])
  total_steps = schedule.total_steps(config.num_epochs, num_train, config.batch_size)
  repl = parallel.replicated(mesh)
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=config.checkpoint_every_steps,
                                             keep=config.keep_checkpoints)
  state, start_step = checkpointer.restore_latest(abstract)
  if state is None:
    init = jax.jit(lambda r: create_train_state(model, optimizers, dataset.image_shape, r),
                   out_shardings=repl)
    state, start_step = init(rng), 0
    if pretrained:
      state = jax.device_put(_apply_init_from(state, pretrained, optimizers), repl)
    if is_main:
      fileio.write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
      fileio.write_json_atomic(os.path.join(workdir, "dataset.json"),
                         {"name": dataset.name, "class_names": list(dataset.class_names),
                          "image_shape": list(dataset.image_shape)})
    parallel.print_main(_describe_run(config, dataset, total_steps, mesh))
  else:
    changes = _config_changes(workdir, config)
    parallel.print_main(
        f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}"
        f"{'; config fields changed since the start: ' + ', '.join(changes) if changes else ''}")

  train_fns, eval_fn = make_step_fns(model, optimizers, config, mesh)
  writer = MetricWriter(workdir)
  progress = _Progress(total_steps, config.batch_size, start_step)
  batches = data_lib.train_batches(dataset, config.data, global_batch_size=config.batch_size,
                                   seed=config.seed, start_step=start_step,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  last_checkpoint = checkpointer.latest_step()
  pending = []
  try:
    with preemption.PreemptionWatcher() as watcher:
      for step in range(start_step, total_steps):
        phase = schedule.phase_of_step(step, config, num_train)
        state, step_metrics = train_fns[phase](state, parallel.to_global(next(batches), mesh))
        pending.append((step, step_metrics))
        done = step + 1
        log_now = done % config.log_every_steps == 0
        stop = watcher.should_stop(done, sync_boundary=log_now)
        save_now = stop or done == total_steps or (config.checkpoint_every_steps > 0 and
                                                  done % config.checkpoint_every_steps == 0)
        if save_now or log_now:
          pending = jax.device_get(pending)
          _check_finite(pending, last_checkpoint)  # never checkpoint a non-finite state
          means = {k: float(np.mean([m[k] for _, m in pending if k in m]))
                   for k in pending[-1][1] if k != "gate_finite"}
          writer.write(done, f"train_{phase}" if phase != "joint" else "train", means)
          parallel.print_main(progress.line(done, means, phase))
          pending = []
        if save_now and checkpointer.maybe_save(done, state, force=stop or done == total_steps):
          last_checkpoint = done
        if stop:
          raise preemption.Preempted(
              f"stopped by {watcher.signal_name} after step {done}; checkpoint saved in "
              f"{os.path.join(checkpointer.directory, str(last_checkpoint))}. Run the same "
              "command again to resume.")
        if (config.eval_every_steps > 0 and done % config.eval_every_steps == 0
            and done < total_steps):
          summary = summarize_eval(evaluate(eval_fn, state, dataset, config, mesh),
                                   dataset.num_classes, state.host_gate(), config.seed)
          writer.write(done, "test", {k: v for k, v in summary.items() if isinstance(v, float)})
          parallel.print_main(f"  eval at step {done}: accuracy {summary['accuracy']:.4f} "
                              f"MIS {summary['mis']:.4f}")
  finally:
    checkpointer.close()
    writer.flush()

  summary = summarize_eval(evaluate(eval_fn, state, dataset, config, mesh), dataset.num_classes,
                           state.host_gate(), config.seed)
  writer.write(total_steps, "test", {k: v for k, v in summary.items() if isinstance(v, float)})
  writer.close()
  results = {"method": config.method, "dataset": dataset.name, "model": config.model.name,
             "step": int(jax.device_get(state.step)), "accuracy": summary["accuracy"],
             "mis": summary["mis"], "gate_density": summary["gate_density"]}
  if is_main:
    fileio.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results





def _abstract_state(model, optimizers, dataset, rng, sharding):
  template = jax.eval_shape(
      lambda: create_train_state(model, optimizers, dataset.image_shape, rng))
  return checkpoint_lib.abstract_like(template, sharding)


@dataclasses.dataclass
class TrainedRun:
  """A finished (or interrupted) run restored from its workdir, ready for evaluation."""
  config: Any
  dataset: data_lib.Dataset
  model: models.CSGClassifier
  state: TrainState
  step: int
  mesh: Any


def load_run(workdir: str, *, devices: Optional[Sequence[jax.Device]] = None) -> TrainedRun:
  """Restores the newest good checkpoint of `workdir` with the config the run was trained with."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise CSGError(f"{workdir!r} holds no config.json: is it a csg_jax workdir? "
                   "(train one with launch/train.py --workdir ...)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  mesh = parallel.make_mesh(devices)
  dataset = data_lib.load_dataset(config.data)
  model = models.build_model(config.model, dataset.num_classes, use_gate=config.method == "csg",
                             gate_init=config.csg.gate_init)
  optimizers = optimizer_lib.make_optimizers(
      config, schedule.steps_per_optimizer(config, len(dataset.splits["train"])))
  checkpointer = checkpoint_lib.Checkpointer(workdir, every_steps=0, keep=config.keep_checkpoints)
  try:
    state, step = checkpointer.restore_latest(_abstract_state(
        model, optimizers, dataset, jax.random.PRNGKey(config.seed), parallel.replicated(mesh)))
  finally:
    checkpointer.close()
  if state is None:
    raise CSGError(f"{workdir!r} holds no checkpoint yet; train it first with launch/train.py")
  return TrainedRun(config, dataset, model, state, step, mesh)
