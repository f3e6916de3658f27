"""The train state (params, gates, batch statistics, one optimiser state per optimiser), its
creation, its abstract skeleton for restoring, `init_from` (another run's weights), and what a
state's shapes say about the config that builds them (`Network`), for mismatch messages."""

import dataclasses
import re
from typing import Any
from collections.abc import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from csg_jax import gate as gate_lib
from csg_jax import methods
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
    """The method's [C, K] variable as stored (CSG's G, PICNN's Θ), or None for STD. What
    evaluation reads is the method's class matrix (methods.class_matrix)."""
    return gate_lib.gate_values(self.gates)

  def host_gate(self) -> np.ndarray | None:
    """gate_matrix() as a numpy array on the host."""
    return gate_lib.host_gate_values(self.gates)

  def explain_shapes(self, stored: Mapping[str, tuple[int, ...]],
                     config_name: str) -> tuple[str, str, tuple[str, ...]] | None:
    """Why a checkpoint of shapes `stored` ('params/...' -> shape) does not restore into this
    (abstract) state, in config terms: (what differs, the fix, the config fields), or None when
    no config field explains it. Asked by Checkpointer.restore_latest."""
    theirs = Network.of(stored)
    ours = Network.of(checkpoint_lib.tree_shapes(self))
    fields = theirs.differences(ours)
    if not fields:
      return None
    return (f"holds {theirs.describe()}; {config_name} builds {ours.describe_only(fields)}",
            theirs.fixes(fields), fields)


_BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")
_STEMS = ("params/backbone/stem_conv/kernel", "params/backbone/conv1/kernel")  # ResNets; tiny
_HEAD = "params/head/kernel"


def _architecture(shapes: Mapping[str, tuple[int, ...]]) -> str:
  """The model.name whose backbone has these layers ("resnet18", "resnet8", "tiny"), or ""."""
  backbone = [k.split("/")[2:] for k in shapes if k.startswith("params/backbone/")]
  modules = {parts[0] for parts in backbone}
  if modules == {"conv1", "conv2"}:
    return "tiny"
  stem = shapes.get(_STEMS[0])
  blocks = {}
  for module in modules:
    match = _BLOCK.match(module)
    if match:
      stage = int(match.group(1))
      blocks[stage] = max(blocks.get(stage, 0), int(match.group(2)))
  stages = tuple(blocks.get(s, 0) for s in range(1, max(blocks, default=0) + 1))
  if stem is None or len(stem) != 4 or not stages or 0 in stages:
    return ""
  block = "bottleneck" if any(parts[1:2] == ["conv3"] for parts in backbone) else "basic"
  if stem[0] == 7:  # the ImageNet layout
    return next((f"resnet{depth}" for depth, spec in models.IMAGENET_RESNETS.items()
                 if spec == (block, stages)), "")
  if block == "basic" and len(stages) == 3 and len(set(stages)) == 1:  # the CIFAR family
    return f"resnet{6 * stages[0] + 2}"
  return ""


def _method(shapes: Mapping[str, tuple[int, ...]]) -> str:
  """The method whose variables the `gates` keys of `shapes` are ("std" for none), or ""."""
  names = {k.split("/")[-1] for k in shapes if k.startswith(f"{gate_lib.GATE_COLLECTION}/")}
  if len(names) > 1:
    return ""
  method = methods.of_variable(next(iter(names), None))
  return method.name if method is not None else ""


def _plural(n: int, what: str) -> str:
  return f"{n} {what}" if n == 1 else f"{n} {what}{'es' if what.endswith('s') else 's'}"


def _and(items: Sequence[str]) -> str:
  """"a", "a and b", "a, b and c"."""
  items = [i for i in items if i]
  return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


@dataclasses.dataclass(frozen=True)
class Network:
  """What a train state's shapes say about the config that builds them: the model's name,
  base width and method (by the variable it keeps in `gates`), and its data's channel and class
  counts (None where the shapes do not say)."""
  model: str  # "" when no model.name has these layers
  layers: frozenset[str]  # the backbone's variable names, which model.name decides
  width: int | None
  channels: int | None
  classes: int | None
  method: str  # "std", "csg", "picnn"; "" when no method has its `gates` variables

  @classmethod
  def of(cls, shapes: Mapping[str, tuple[int, ...]]) -> "Network":
    stem = next((tuple(shapes[k]) for k in _STEMS if k in shapes), ())
    head = tuple(shapes.get(_HEAD, ()))
    return cls(model=_architecture(shapes),
               layers=frozenset(k for k in shapes
                                if k.startswith(("params/backbone/", "batch_stats/backbone/"))),
               width=stem[3] if len(stem) == 4 else None,
               channels=stem[2] if len(stem) == 4 else None,
               classes=head[1] if len(head) == 2 else None,
               method=_method(shapes))

  def differences(self, other: "Network") -> tuple[str, ...]:
    """The config fields in which `other` differs: model.name, model.width, channels, classes
    (the last two the data's), method (the variables it keeps in `gates`)."""
    fields = []
    if self.layers != other.layers or self.model != other.model:
      fields.append("model.name")
    for field, mine, theirs in (("model.width", self.width, other.width),
                                ("channels", self.channels, other.channels),
                                ("classes", self.classes, other.classes),
                                ("method", self.method, other.method)):
      if mine != theirs:
        fields.append(field)
    return tuple(fields)

  def _variables(self) -> str:
    method = methods.METHODS.get(self.method)
    return method.variable_description if method is not None else "variables of another method"

  def describe(self) -> str:
    """E.g. "a resnet18 at base width 8 with 3 input channels, 10 classes and a gate"."""
    parts = [f"a {self.model or 'network of unknown architecture'}"]
    if self.width is not None:
      parts.append(f"at base width {self.width}")
    has = [_plural(n, what) for n, what in ((self.channels, "input channel"),
                                            (self.classes, "class")) if n is not None]
    has += [self._variables()] if self._variables() else []
    return " ".join(parts + ([f"with {_and(has)}"] if has else []))

  def describe_only(self, fields: Sequence[str]) -> str:
    """This network's values of `fields`, e.g. "one with base width 64 and 1 input channel"."""
    values = {"model.width": f"base width {self.width}",
              "channels": _plural(self.channels or 0, "input channel"),
              "classes": _plural(self.classes or 0, "class"),
              "method": self._variables() or "no variables of a method"}
    listed = _and([values[f] for f in fields if f in values])
    if "model.name" in fields:
      return f"a {self.model or 'network of other layers'}" + (f" with {listed}" if listed else "")
    return f"one with {listed}"

  def fixes(self, fields: Sequence[str]) -> str:
    """What a config must set to build this network, for each of `fields`."""
    out = []
    if "model.name" in fields:
      out.append(f"set --config.model.name={self.model}" if self.model else
                 "set --config.model.name to the architecture it was written with")
    if "model.width" in fields:
      out.append(f"set --config.model.width={self.width}")
    if "method" in fields:
      out.append(f"set --config.method={self.method}" if self.method else
                 "set --config.method to the method it was trained with")
    data = [_plural(self.channels or 0, "channel") if "channels" in fields else "",
            _plural(self.classes or 0, "class") if "classes" in fields else ""]
    if any(data):
      out.append(f"use data with {_and(data)}")
    return _and(out)


def create_train_state(model: models.Classifier,
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
  (an RGB stem on gray data), which is summed over its input channels. Anything else is one
  CSGError line naming the config field that explains the shapes (model.width, model.name, the
  data's classes or channels) when one does, else the first mismatching parameters.
  """
  tree, source = checkpoint_lib.load_pytree(path)
  skip = optimizer_lib.compile_freeze_pattern(skip_pattern)
  problems, loaded, summed = [], {}, []  # problems: (path, checkpoint shape or None, ours)
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
        problems.append((f"{collection}/{name}", None, tuple(leaf.shape)))
      elif _colour_kernel_for_gray(theirs[name].shape, leaf.shape):
        # An RGB-trained conv on 1-channel data (ImageNet weights on digits): its kernel summed
        # over the colours computes what it would on the gray image copied into R, G and B.
        out[name] = np.asarray(theirs[name], leaf.dtype).sum(axis=2, keepdims=True)
        summed.append(f"{collection}/{name}")
      elif tuple(theirs[name].shape) != tuple(leaf.shape):
        problems.append((f"{collection}/{name}", tuple(theirs[name].shape), tuple(leaf.shape)))
      else:
        out[name] = np.asarray(theirs[name], leaf.dtype)
    loaded[collection] = out
  if problems:
    raise CSGError(_init_from_mismatch(path, skip_pattern, problems,
                                       checkpoint_lib.tree_shapes(tree),
                                       checkpoint_lib.tree_shapes(template)))
  log(f"Initialising from {source}: {sum(len(v) for v in loaded.values())} "
      f"arrays{' (gate included)' if 'gates' in loaded else ''}"
      f"{'; summed over RGB for 1-channel data: ' + ', '.join(summed) if summed else ''}")
  return loaded


def _problem(path: str, theirs: tuple[int, ...] | None, ours: tuple[int, ...]) -> str:
  if theirs is None:
    return f"{path} is missing from the checkpoint"
  return f"{path}: checkpoint {theirs} vs model {ours}"


def _init_from_mismatch(path: str, skip_pattern: str, problems: Sequence[tuple],
                        stored: Mapping[str, tuple[int, ...]],
                        wanted: Mapping[str, tuple[int, ...]]) -> str:
  """The one-line error of an init_from whose `problems` remain after skipping and summing."""
  theirs, ours = Network.of(stored), Network.of(wanted)
  paths = [p for p, _, _ in problems]
  in_backbone = any(p.split("/")[1:2] == ["backbone"] for p in paths)
  # A stem of 3 input channels loads where 1 is needed (summed): only other counts matter.
  relevant = {"model.name": in_backbone, "model.width": in_backbone,
              "channels": any(p in _STEMS for p in paths)
                          and (theirs.channels, ours.channels) != (3, 1),
              "classes": any(p.startswith("params/head/") for p in paths)}
  fields = [f for f in theirs.differences(ours) if relevant.get(f)]
  count = "1 parameter differs" if len(problems) == 1 else f"{len(problems)} parameters differ"
  if not fields:
    listed = "; ".join(_problem(*p) for p in problems[:4])
    return (f"config.init_from={path!r} does not fit this model ({count}): {listed}"
            f"{f' ... ({len(problems)} in all)' if len(problems) > 4 else ''}. Skip them with "
            "--config.init_from_skip=<regex>, e.g. '^head/' for a new class count.")
  # The data's classes and channels shape the head and the stem: those are left fresh.
  stem = next((p for p in paths if p in _STEMS), "")
  parts = {"classes": ("the head", "^head/"),
           "channels": ("the stem", f"^{stem.split('/', 1)[-1].rsplit('/', 1)[0]}/")}
  fixes = [theirs.fixes([f]) for f in fields if f not in parts]
  fresh = [parts[f] for f in fields if f in parts]
  if fresh:
    pattern = "|".join(([skip_pattern] if skip_pattern else []) + [p for _, p in fresh])
    fixes.append(f"leave {_and([what for what, _ in fresh])} fresh with "
                 f"--config.init_from_skip='{pattern}'")
  return (f"config.init_from={path!r} holds {theirs.describe()}; this config builds "
          f"{ours.describe_only(fields)} ({count}, e.g. "
          f"{_problem(*_example(problems, fields[0]))}): {_and(fixes)}")


def _example(problems: Sequence[tuple], field: str) -> tuple:
  """The problem that shows `field` best: a conv whose channel counts both differ for a width,
  the stem for channels, the head for classes, a missing layer for model.name."""
  def shows(problem) -> bool:
    name, theirs, ours = problem
    if field == "model.width":
      return (theirs is not None and len(ours) == 4 and len(theirs) == 4
              and theirs[2] != ours[2] and theirs[3] != ours[3])
    if field == "channels":
      return name in _STEMS
    if field == "classes":
      return name == _HEAD
    return theirs is None
  return next((p for p in problems if shows(p)), problems[0])


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
