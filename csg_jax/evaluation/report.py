"""The evaluation report of one trained run.

`evaluate_workdir(W)` restores W's newest checkpoint, runs the test split through the STD path,
and writes W/eval/report.json (accuracy, MIS, density, per-class accuracy, filters per class),
W/eval/mi_matrix.npy and three figures (the MI matrix, the max-MI histogram and, for CSG, the
gate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from csg_jax import fileio
from csg_jax import methods
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import plots
from csg_jax.evaluation import predict
from csg_jax.runs import TrainedRun, load_run


def _per_class(values, class_names) -> dict[str, Any]:
  return {name: (None if v is None else (int(v) if isinstance(v, (np.integer, int)) else v))
          for name, v in zip(class_names, values)}


@dataclasses.dataclass
class Evaluation:
  report: dict[str, Any]  # what report.json holds
  mi_matrix: np.ndarray  # [C, K]
  gate: np.ndarray | None  # [C, K], None for STD
  class_names: Sequence[str]


def evaluate_workdir(workdir: str, *, split: str = "test",
                     run: TrainedRun | None = None) -> Evaluation:
  """Evaluates a trained run and writes its report and figures under <workdir>/eval.

  `run`: the workdir's run when the caller has restored it already (not restored twice).
  """
  run = run or load_run(workdir)
  eval_fn = predict.make_eval_fn(run.model, run.mesh)
  result = predict.evaluate(eval_fn, run.state, run.dataset, run.config, run.mesh, split)
  method = methods.for_config(run.config)
  gate = method.class_matrix(run.state.gates)
  summary = predict.summarize_eval(result, run.dataset.num_classes, method.density(run.state.gates),
                                   predict.mis_seed(run.config))
  mi = summary["mi_matrix"]
  names = list(run.dataset.class_names)
  num_classes = run.dataset.num_classes
  ceiling = mis_lib.mi_ceiling(result["label"], num_classes)
  by_mi = mis_lib.filters_per_class(mis_lib.assigned_class_from_mi(mi), num_classes)
  by_gate, closed = (None, None) if gate is None else mis_lib.gate_filters_per_class(gate)

  out_dir = fileio.join(workdir, "eval")
  fileio.makedirs(out_dir)
  figures = {"mi_matrix": "eval/mi_matrix.png", "max_mi_histogram": "eval/max_mi_histogram.png"}
  if gate is not None:
    figures["gate"] = "eval/gate.png"
  title = f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}"
  path = {name: fileio.join(workdir, rel) for name, rel in figures.items()}
  plots.matrix_figure(path["mi_matrix"], mi, names, vmax=ceiling, colorbar_label="nats",
                      sorted_by=plots.BY_MI,
                      title=f"{title}: MI(filter; class), MIS {summary['mis']:.3f}")
  plots.max_mi_histogram(path["max_mi_histogram"], {run.config.method.upper(): mi.max(0)},
                         mi_ceiling=ceiling, title=title)
  if gate is not None:
    plots.matrix_figure(path["gate"], gate, names, vmax=1.0, colorbar_label=method.value_label,
                        title=f"{title}: " + plots.matrix_title(method.matrix_label,
                                                                summary["gate_density"]),
                        cmap="magma", sorted_by=plots.by_matrix(method.class_label))
  with fileio.atomic_file(fileio.join(out_dir, "mi_matrix.npy"), suffix=".npy") as tmp:
    np.save(tmp, mi)
  report = {
      "workdir": fileio.name(workdir),
      "method": run.config.method, "dataset": run.dataset.name, "model": run.config.model.name,
      "step": run.step, "split": split, "num_examples": summary["num_examples"],
      "accuracy": summary["accuracy"], "mis": summary["mis"],
      "gate_density": summary["gate_density"],
      "per_class_accuracy": _per_class(summary["per_class_accuracy"], names),
      # Open filters per class by the gate, closed ones (all-zero column) apart; by MI.
      "filters_per_class": {"by_gate": None if by_gate is None else _per_class(by_gate, names),
                            "closed_by_gate": closed,
                            "by_mi": _per_class(by_mi, names)},
      "mi_ceiling": ceiling,
      "figures": figures,
  }
  if jax.process_index() == 0:
    fileio.write_json_atomic(fileio.join(out_dir, "report.json"), report)
  return Evaluation(report, mi, gate, names)


