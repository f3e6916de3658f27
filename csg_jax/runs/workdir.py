"""What a workdir holds besides checkpoints, and what it says about the run in it.

config.json: the config as given (a later run of the same command compares equal to it);
dataset.json: what the data set determined (class names, image shape, split sizes and the
normalisation statistics every image of the run was normalised with); results.json: written at
the end of training, so its presence means the run finished; imported.json (a run of imported
PyTorch weights, runs.trained.save_as_run): what the weights need (model, width, channels,
classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from csg_jax import config as config_lib
from csg_jax import fileio
from csg_jax.errors import CSGError


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with: fields renamed since then under their new names,
  fields added since then at the value that keeps its function (config.complete)."""
  path = fileio.join(workdir, "config.json")
  if not fileio.exists(path):
    raise CSGError(f"{workdir!r} holds no config.json: is it a csg_jax workdir? "
                   "(train one with launch/train.py --workdir ...)")
  return ml_collections.ConfigDict(config_lib.complete(fileio.read_json(path)))


def write_config(workdir: str, config) -> None:
  fileio.write_json_atomic(fileio.join(workdir, "config.json"), config.to_dict())


def write_dataset_record(workdir: str, dataset) -> None:
  """dataset.json: the data set's name, classes, image shape, split sizes and statistics."""
  mean, std = dataset.statistics
  fileio.write_json_atomic(fileio.join(workdir, "dataset.json"), {
      "name": dataset.name, "class_names": list(dataset.class_names),
      "image_shape": list(dataset.image_shape),
      "split_sizes": {role: len(split) for role, split in dataset.splits.items()},
      "mean": list(mean), "std": list(std)})


def recorded_statistics(workdir: str):
  """The (mean, std) the run in `workdir` normalised with (dataset.json), or None when it has
  not recorded them (a new workdir, or one written before they were recorded)."""
  path = fileio.join(workdir, "dataset.json")
  if not fileio.exists(path):
    return None
  recorded = fileio.read_json(path)
  if not recorded.get("mean") or not recorded.get("std"):
    return None
  return tuple(recorded["mean"]), tuple(recorded["std"])


def _show(value) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def finished_run(workdir: str, config) -> dict[str, Any] | None:
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


def check_trainable(workdir: str, config) -> None:
  """Refuses, before anything is loaded, a workdir holding a run of another config or a finished
  run of this one; a new workdir or an unfinished run of `config` passes (it resumes)."""
  results = finished_run(workdir, config)
  if results is not None:
    raise CSGError(
        f"{workdir} holds a finished run (step {results['step']}: accuracy "
        f"{results['accuracy']:.4f}, MIS {results['mis']:.4f}); evaluate it with "
        f"`python launch/evaluate.py --workdir {workdir}`, or train again in another --workdir "
        f"(or delete {workdir})")


def check_new_workdir(workdir: str) -> None:
  """Refuses a workdir that already holds a run, before any work is done for a new one."""
  if fileio.exists(fileio.join(workdir, "config.json")) or fileio.listdir(
      fileio.join(workdir, "checkpoints")):
    raise CSGError(f"{workdir!r} already holds a run (config.json or checkpoints); choose a new "
                   "--workdir, or remove that one")


def write_results(workdir: str, results: Mapping[str, Any]) -> None:
  fileio.write_json_atomic(fileio.join(workdir, "results.json"), dict(results))


def summary_line(results: Mapping[str, Any], workdir: str) -> str:
  """The closing line of a run: method, model, data, step, accuracy, MIS, CSG's density (and the
  validation split's accuracy and MIS, when it has one), results path."""
  density = results["gate_density"]  # a CSG gate's; None for methods without one
  density = "" if density is None else f", gate L1 density {density:.4f}"
  val = (f"; val accuracy {results['val_accuracy']:.4f}, MIS {results['val_mis']:.4f}"
         if "val_accuracy" in results else "")
  return (f"done: {results['method']} {results['model']} on {results['dataset']} after step "
          f"{results['step']}: accuracy {results['accuracy']:.4f}, MIS {results['mis']:.4f}"
          f"{density}{val}; results in {fileio.join(workdir, 'results.json')}")
