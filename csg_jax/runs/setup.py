"""Everything a run is built from, derived once from its config: the data set, the model, the
plan, the optimisers, the device mesh. Used to start a run, to resume one and to restore one."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import optax

from csg_jax import data as data_lib
from csg_jax import methods
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax import sharding
from csg_jax.runs import state as state_lib


@dataclasses.dataclass
class RunSetup:
  config: Any
  mesh: Any
  dataset: data_lib.Dataset | None  # None for a setup built from shapes alone (for_shapes)
  model: models.Classifier
  method: methods.Method
  plan: Any  # plan.Plan
  optimizers: dict[str, optax.GradientTransformation]
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees

  @property
  def rng(self) -> jax.Array:
    return jax.random.PRNGKey(self.config.seed)

  def abstract_state(self) -> state_lib.TrainState:
    return state_lib.abstract_state(self.model, self.optimizers, self.image_shape,
                                    self.rng, sharding.replicated(self.mesh))


def _mesh(config, devices: Sequence[jax.Device] | None):
  """The mesh over `devices` (default: all), once both global batches divide over it."""
  mesh = sharding.make_mesh(devices)
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  return mesh


def _assemble(config, mesh, dataset, num_classes: int, image_shape: Sequence[int],
              num_train_examples: int) -> RunSetup:
  method = methods.for_config(config)
  model = models.build_model(config.model, num_classes, method)
  plan = method.plan(num_train_examples)
  return RunSetup(config, mesh, dataset, model, method, plan,
                  optimizer_lib.make_optimizers(config, plan, method), tuple(image_shape))


def for_shapes(config, *, num_classes: int, image_shape: Sequence[int],
               num_train_examples: int, devices: Sequence[jax.Device] | None = None
               ) -> RunSetup:
  """The setup of `config` for data of these shapes, without loading any data (`dataset` is
  None): what step functions, abstract states and benchmarks need."""
  return _assemble(config, _mesh(config, devices), None, num_classes, image_shape,
                   num_train_examples)


def build(config, *, devices: Sequence[jax.Device] | None = None,
          statistics=None) -> RunSetup:
  """Data set, model, plan and optimisers of `config` on a mesh of `devices` (default: all).

  statistics: the normalisation a run recorded (runs.workdir.recorded_statistics), for a run
  that resumes or is restored; None measures them when the config and the source give none.
  """
  mesh = _mesh(config, devices)  # a bad batch size fails before the data loads
  dataset = data_lib.load_dataset(config.data, seed=config.seed, statistics=statistics)
  return _assemble(config, mesh, dataset, dataset.num_classes, dataset.image_shape,
                   len(dataset.splits["train"]))
