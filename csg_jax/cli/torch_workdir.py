"""PyTorch weights imported into a new workdir: the step csg-import-torch is, and the first step of
csg-evaluate --torch_checkpoint. No flags here, so both commands (and scripts) import it.

`read` checks everything it can and reads the weights, writing nothing; `write` writes the
workdir (config.json, imported.json and the step-0 checkpoint, by runs.save_as_run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from csg_jax import cli
from csg_jax import config as config_lib
from csg_jax.data import sources
from csg_jax.errors import CSGError


@dataclasses.dataclass
class Imported:
  """Weights read and checked for a new workdir, not written yet."""
  config: Any  # the config, with model.width and method as the file has them
  variables: dict[str, Any]
  record: dict[str, Any]  # what imported.json holds: what the weights need of a config
  num_filters: int  # K


def data_channels(data_config) -> int | None:
  """The channel count of the config's data where it is known before the data loads (one per
  value of data.mean, or of the source's known statistics), else None."""
  mean = tuple(data_config.mean) or (sources.get(data_config.source).statistics or ((),))[0]
  return len(mean) or None


def read(config, weights: str, workdir: str) -> Imported:
  """Checks that `workdir` is new and writable and that `weights` fit `config` (padding, base
  width, classes), and reads them; sets config.model.width and config.method from the file."""
  # Imported here so that --help and flag errors answer without loading JAX.
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  from csg_jax import torch_import  # pylint: disable=g-import-not-at-top
  runs.check_new_workdir(workdir)
  if not config.model.pytorch_padding:
    raise CSGError("config.model.pytorch_padding is False: PyTorch weights need PyTorch's "
                   "padding to give their logits (leave it at True)")
  model, variables = torch_import.load_resnet(weights, config.model.name, config.data.num_classes)
  width = model.backbone.base_width
  if config.model.width not in (0, width):
    raise CSGError(f"config.model.width is {config.model.width} but {weights} has base width "
                   f"{width} (its conv1); leave model.width at 0")
  config.model.width = width
  config.method = "csg" if model.gate is not None else "std"
  config_lib.validate(config)
  cli.check_workdir(workdir)
  channels = variables["params"]["backbone"]["stem_conv"]["kernel"].shape[2]
  record = {"weights": weights, "model": config.model.name, "width": width,
            "input_channels": channels, "num_classes": model.num_classes,
            "gate": model.gate is not None}
  return Imported(config, variables, record, model.num_filters)


def write(imported: Imported, workdir: str) -> None:
  """Writes the imported weights as step 0 of a run in the new `workdir`."""
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  runs.save_as_run(imported.config, imported.variables, workdir, record=imported.record)


def summary(imported: Imported, workdir: str) -> str:
  """'<method> <model> (width, channels, classes, K) into <workdir>', as the commands say it."""
  r = imported.record
  return (f"{imported.config.method} {r['model']} (width {r['width']}, {r['input_channels']} "
          f"input channels, {r['num_classes']} classes, K = {imported.num_filters}) into "
          f"{workdir}")
