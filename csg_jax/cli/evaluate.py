r"""Evaluates a trained run: accuracy, MIS, gate density, per-class numbers and figures.

  csg-evaluate --workdir workdirs/digits_resnet8_csg

  csg-evaluate --torch_checkpoint CSG.pt --config voc_part_resnet152 \
      --config.data.source=voc_part_released --config.data.path=preprocessed_VOC_Part \
      --workdir workdirs/authors_csg

Writes <workdir>/eval/report.json, mi_matrix.npy and PNG figures (gate, MI matrix, histogram of
each filter's largest MI), drawn on fixed scales so STD and CSG runs compare by eye.

With --torch_checkpoint (a PyTorch ResNet: torchvision's, or the authors' CSG.pt/STD.pt), the
weights are first imported into the new --workdir exactly as csg-import-torch imports them, with
--config and its overrides, and that workdir is then evaluated. Before anything is written the
config's data is loaded and must fit the weights (channels, classes); a workdir that already
holds a run, a missing file or data that does not fit is one line, and nothing is written.
Without --torch_checkpoint, --config is not read: a run is evaluated with its own config.json.
From a checkout without `pip install -e .`: python launch/evaluate.py ...
"""

import os

from absl import flags

from csg_jax import cli
from csg_jax.errors import CSGError
from csg_jax.log import log

_CONFIG = cli.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by csg-train (with "
                               "--torch_checkpoint: the new workdir to import into).",
                               required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Which split to evaluate: test, train, or val (runs "
                             "with data.validation_fraction > 0).")
_TORCH_CHECKPOINT = flags.DEFINE_string(
    "torch_checkpoint", None, "A PyTorch ResNet (.pth/.pt, or .safetensors) to import into the new "
    "--workdir with --config, as csg-import-torch does, before evaluating it.")


def _count(channels: int) -> str:
  return f"{channels} channel{'s' if channels != 1 else ''}"


def _import(config, weights: str, workdir: str, split: str) -> None:
  """Imports `weights` into the new `workdir` with `config`, once the config's data is loaded
  and fits them; CSGError, with nothing written, otherwise."""
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  from csg_jax.cli import torch_workdir  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(weights):
    raise CSGError(f"--torch_checkpoint {weights!r} does not exist: give the path of a PyTorch "
                   "ResNet file (.pth/.pt or .safetensors)")
  try:
    runs.check_new_workdir(workdir)
  except CSGError:
    raise CSGError(f"--workdir {workdir!r} already holds a run: evaluate it with `csg-evaluate "
                   f"--workdir {workdir}` (without --torch_checkpoint), or import into a new "
                   "--workdir") from None
  imported = torch_workdir.read(config, weights, workdir)
  setup = runs.build(imported.config)  # the data as evaluation will load it
  dataset, record = setup.dataset, imported.record
  channels, classes = dataset.image_shape[-1], dataset.num_classes
  if (channels, classes) != (record["input_channels"], record["num_classes"]):
    raise CSGError(
        f"{weights} holds a {record['model']} for images of {_count(record['input_channels'])} "
        f"and {record['num_classes']} classes, but this config's data ({config.data.source}"
        f"{f' at {config.data.path}' if config.data.get('path') else ''}) has "
        f"{_count(channels)} and {classes} classes: give a --config whose data fits the weights")
  if split not in dataset.splits:
    raise CSGError(f"--split={split}: this config's data has no {split} split (it has "
                   f"{', '.join(dataset.splits)})")
  torch_workdir.write(imported, workdir)
  log(f"imported {weights} as {torch_workdir.summary(imported, workdir)}")


def main(argv):
  weights = _TORCH_CHECKPOINT.value
  config = cli.start(argv, _CONFIG if weights is not None else None)
  with cli.user_errors():
    if _SPLIT.value not in ("test", "train", "val"):
      raise CSGError(f"--split={_SPLIT.value!r}: use test, train or val")
    if weights is None and (flags.FLAGS["config"].present or cli.config_overrides()):
      raise CSGError("--config is read only with --torch_checkpoint: the run in --workdir is "
                     "evaluated with its own config.json (drop --config and its overrides)")
    from csg_jax.evaluation import report  # pylint: disable=g-import-not-at-top  (JAX)
    if weights is not None:
      _import(config, weights, _WORKDIR.value, _SPLIT.value)
    r = report.evaluate_workdir(_WORKDIR.value, split=_SPLIT.value).report
  density = "" if r["gate_density"] is None else f", gate L1 density {r['gate_density']:.4f}"
  log(f"{r['method']} {r['model']} on {r['dataset']} (step {r['step']}, {r['split']} split, "
      f"{r['num_examples']} examples): accuracy {r['accuracy']:.4f}, MIS {r['mis']:.4f}"
      f"{density}; report and figures in {os.path.join(_WORKDIR.value, 'eval')}")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
