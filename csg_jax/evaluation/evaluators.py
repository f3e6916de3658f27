"""What the training loop asks of evaluation, behind one object: the trainer builds a
`TrainingEvaluator` from its run setup and its metric writer, and calls it at its evaluation
steps and at the end. The loop imports nothing else of evaluation.

At each evaluation: the split's accuracy, MIS and density as scalars and its MI matrix as an
image; the gate as an image with the filters per class. At the end of training: csg-evaluate's
max-MI histogram and csg-explain's filter atlas as images.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from csg_jax.evaluation import explain
from csg_jax.evaluation import explain_report
from csg_jax.evaluation import mis as mis_lib
from csg_jax.evaluation import plots
from csg_jax.evaluation import predict
from csg_jax.log import log
from csg_jax.runs import TrainedRun


class TrainingEvaluator:
  """Evaluates a run's state during and at the end of training, writing to `writer`.

  writer: the loop's metric writer (`write(step, split, scalars)`, `write_image(step, tag,
  image)`, `write_tensorboard_scalars(step, scalars)`, `enabled`, `images`).
  """

  def __init__(self, setup, writer):
    self.setup, self.writer = setup, writer
    self.eval_fn = predict.make_eval_fn(setup.model, setup.mesh)

  def evaluate(self, state, split: str, step: int) -> dict[str, Any]:
    """Evaluates `split` and writes its scalars, and its MI matrix as a TensorBoard image (on the
    labels' MI ceiling, the scale of csg-evaluate's figure), at `step`."""
    setup, writer = self.setup, self.writer
    result = predict.evaluate(self.eval_fn, state, setup.dataset, setup.config, setup.mesh, split)
    summary = predict.summarize_eval(result, setup.dataset.num_classes,
                                     setup.method.density(state.gates),
                                     predict.mis_seed(setup.config))
    writer.write(step, split, {k: v for k, v in summary.items() if isinstance(v, float)})
    if writer.images:  # rendering costs a fraction of a second: at evaluations only
      writer.write_image(step, f"{split}/mi_matrix", plots.matrix_image(
          summary["mi_matrix"], setup.dataset.class_names, colorbar_label="nats",
          sorted_by=plots.BY_MI,
          vmax=mis_lib.mi_ceiling(result["label"], setup.dataset.num_classes),
          title=f"MI(filter; class) on {split} at step {step}, MIS {summary['mis']:.3f}"))
    return summary

  def write_gate(self, state, step: int) -> None:
    """The method's class matrix (CSG's gate G, PICNN's softmax(Θ)) as a TensorBoard image `gate`
    on the fixed scale [0, 1] (classes x filters, filters sorted by class; when the writer draws
    images); each class's number of filters by the matrix's argmax, `filters_per_class/<name>`,
    counting open filters only, and `gate/closed_filters`, whose column is all zero (the argmax
    of such a column is class 0 by convention, not a class the filter serves). Nothing for a
    method without one."""
    method, writer = self.setup.method, self.writer
    gate = method.class_matrix(state.gates)
    if gate is None or not writer.enabled:
      return
    names = self.setup.dataset.class_names
    if writer.images:
      writer.write_image(step, "gate", plots.matrix_image(
          gate, names, vmax=1.0, colorbar_label=method.value_label, cmap="magma",
          sorted_by=plots.by_matrix(method.class_label),
          title=plots.matrix_title(method.matrix_label, method.density(state.gates),
                                   f"at step {step}")))
    counts, closed = mis_lib.gate_filters_per_class(gate)
    writer.write_tensorboard_scalars(step, {
        **{f"filters_per_class/{name}": count for name, count in zip(names, counts)},
        "gate/closed_filters": closed})

  def finish(self, state, step: int, mi_matrix: np.ndarray, *, atlas_filters: int,
             filters_per_page: int = 16) -> None:
    """At the end of training, csg-evaluate's histogram and csg-explain's atlas as TensorBoard
    images at `step`: `test/max_mi_histogram`, and `atlas/page_<n>` for `atlas_filters` filters
    (every class's strongest first; 0: no atlas, which saves one pass over the test split).
    Only when the writer draws images; a run of several processes gets no atlas here (only
    process 0 writes, and the atlas's passes are one process's)."""
    if not self.writer.images:
      return
    run = TrainedRun(self.setup, state, step)
    names = list(run.dataset.class_names)
    ceiling = mis_lib.mi_ceiling(np.asarray(run.dataset.splits["test"].labels), len(names))
    title = f"{run.config.method.upper()} {run.config.model.name} on {run.dataset.name}"
    self.writer.write_image(step, "test/max_mi_histogram", plots.max_mi_histogram_image(
        {run.config.method.upper(): mi_matrix.max(0)}, mi_ceiling=ceiling,
        title=f"{title}, step {step}"))
    if atlas_filters <= 0:
      return
    if jax.process_count() > 1:
      log("TensorBoard atlas left out: a run of several processes draws it afterwards with "
          "`csg-explain --atlas`")
      return
    classes = explain.FilterClasses(self.setup.method.class_matrix(state.gates), mi_matrix,
                                    self.setup.method.class_label)
    scan = explain.scan_split(run, "test")
    filters = explain.atlas_selection(classes, atlas_filters)
    for page, (rows, notes, assigned, page_title) in enumerate(explain_report.atlas_pages(
        run, classes, scan, f"{title}, step {step}", filters, filters_per_page), 1):
      self.writer.write_image(step, f"atlas/page_{page}",
                              plots.atlas_image(rows, notes, assigned, names, title=page_title))
