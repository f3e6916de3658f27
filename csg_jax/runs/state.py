"""The train state (params, gates, batch statistics, one optimiser state per optimiser), its
creation, its abstract skeleton for restoring, and `init_from` (another run's weights)."""

from typing import Any
from collections.abc import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from csg_jax import gate as gate_lib
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax.errors import CSGError
from csg_jax.log import log
from csg_jax.runs import checkpoint as checkpoint_lib


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  gates: Any  # the `gates` collection; {} for a model without a gate
  batch_stats: Any
  opt_state: dict[str, Any]  # one optimiser state per optimiser of the plan ("main", "std"/"csg")

  def variables(self) -> dict[str, Any]:
    out = {"params": self.params, "batch_stats": self.batch_stats, "gates": self.gates}
    return {k: v for k, v in out.items() if v}

  def trainable(self) -> dict[str, Any]:
    """The tree the optimisers update: {"params": ..., "gates": ...}."""
    return {"params": self.params, "gates": self.gates}

  def gate_matrix(self) -> jnp.ndarray | None:
    return gate_lib.gate_values(self.gates)

  def host_gate(self) -> np.ndarray | None:
    """G as a numpy array on the host, or None for a model without a gate."""
    gate = self.gate_matrix()
    return None if gate is None else np.asarray(jax.device_get(gate))


def create_train_state(model: models.CSGClassifier,
                       optimizers: Mapping[str, optax.GradientTransformation],
                       image_shape: Sequence[int], rng: jax.Array) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return state_from_variables(variables, optimizers)


def state_from_variables(variables: Mapping[str, Any],
                         optimizers: Mapping[str, optax.GradientTransformation]) -> TrainState:
  """Step 0 of a run holding `variables` (a fresh init, or imported weights), with fresh
  optimiser states."""
  params = variables["params"]
  gates = variables.get(gate_lib.GATE_COLLECTION, {})
  trainable = {"params": params, "gates": gates}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, gates=gates,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state={name: tx.init(trainable) for name, tx in optimizers.items()})


def abstract_state(model, optimizers, image_shape, rng, sharding) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it: the target of a restore."""
  template = jax.eval_shape(lambda: create_train_state(model, optimizers, image_shape, rng))
  return checkpoint_lib.abstract_like(template, sharding)


def load_init_from(path: str, skip_pattern: str, template: TrainState) -> dict[str, Any]:
  """Weights of another run for fine-tuning: params, batch stats and (if shapes match) gates.

  Every parameter of this model must be in the other run's checkpoint with the same shape,
  except those matched by `skip_pattern` (e.g. "^head/" for a new number of classes), which keep
  their fresh initialisation, and a conv kernel of 3 input channels where this model reads 1
  (an RGB stem on gray data), which is summed over its input channels.
  """
  tree, source = checkpoint_lib.load_pytree(path)
  skip = optimizer_lib.compile_freeze_pattern(skip_pattern)
  problems, loaded, summed = [], {}, []
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
      elif _colour_kernel_for_gray(theirs[name].shape, leaf.shape):
        # An RGB-trained conv on 1-channel data (ImageNet weights on digits): its kernel summed
        # over the colours computes what it would on the gray image copied into R, G and B.
        out[name] = np.asarray(theirs[name], leaf.dtype).sum(axis=2, keepdims=True)
        summed.append(f"{collection}/{name}")
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
  log(f"Initialising from {source}: {sum(len(v) for v in loaded.values())} "
      f"arrays{' (gate included)' if 'gates' in loaded else ''}"
      f"{'; summed over RGB for 1-channel data: ' + ', '.join(summed) if summed else ''}")
  return loaded


def _colour_kernel_for_gray(theirs: Sequence[int], ours: Sequence[int]) -> bool:
  """Whether a conv kernel [kh, kw, 3, O] is being loaded where [kh, kw, 1, O] is needed."""
  return (len(ours) == 4 and len(theirs) == 4 and theirs[2] == 3 and ours[2] == 1
          and tuple(theirs[:2]) == tuple(ours[:2]) and theirs[3] == ours[3])


def apply_init_from(state: TrainState, loaded: Mapping[str, Mapping[str, np.ndarray]],
                    optimizers) -> TrainState:
  """`state` with the loaded arrays in place and fresh optimiser states for them."""
  updated = {}
  for collection, arrays in loaded.items():
    flat = traverse_util.flatten_dict(getattr(state, collection), sep="/")
    flat.update({k: jnp.asarray(v) for k, v in arrays.items()})
    updated[collection] = traverse_util.unflatten_dict(flat, sep="/")
  state = state.replace(**updated)
  return state.replace(opt_state={name: tx.init(state.trainable())
                                  for name, tx in optimizers.items()})
