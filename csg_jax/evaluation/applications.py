"""The paper's applications on trained runs: localization and adversarial-sample detection.

For each run: localization (GradMap, CAM, ActivMap; only when its data source has object masks
for the test split: `<data.path>/masks/<test split>.npy` beside a folder, or the
voc_part_released cache), FGSM/PGD attacks and detection ROC-AUCs. Writes
`W/eval/applications.json`, `W/eval/applications.md` and PNG figures; with an STD and a CSG run,
also a side-by-side report. Definitions and protocol: docs/applications.md.
"""

import itertools
import time
from typing import Any
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
import optax

from csg_jax import data as data_lib
from csg_jax import fileio
from csg_jax import methods
from csg_jax import runs
from csg_jax.data import sources
from csg_jax.errors import CSGError
from csg_jax.evaluation import attacks
from csg_jax.evaluation import detection
from csg_jax.evaluation import explanation_quality
from csg_jax.evaluation import localization
from csg_jax.evaluation import plots
from csg_jax.evaluation import predict
from csg_jax.log import log
from csg_jax.text import number
from csg_jax import sharding

Report = dict[str, Any]
# Below this many held-out clean or adversarial examples a detection AUC is flagged as noise.
MIN_DETECTION_SAMPLES = 10
# {(attack, ε): {detector: {'auc', 'fpr', 'tpr', ...}}}: the ROC curves behind a report.
Curves = dict[tuple[str, float], dict[str, dict[str, Any]]]


def app_config() -> ml_collections.ConfigDict:
  """Every application setting; the launcher overrides them with --app.<field>=<value>."""
  c = ml_collections.ConfigDict()
  c.localization = localization.default_config()  # GradMap / CAM / ActivMap settings
  c.attacks = attacks.default_config()  # FGSM / PGD settings
  c.detection = detection.default_config()  # detector protocol
  c.explanations = explanation_quality.default_config()  # judging explanations (needs masks)
  c.run_localization = True  # run localization when the data set has object masks
  c.run_adversarial = True  # run attacks and detection
  c.run_explanations = True  # judge explanations when the data set has object masks
  c.num_examples = 8  # test images in the localization example figure (0: no figure)
  return c


def run_applications(cfg, workdirs: Sequence[str] = (), *, std_workdir: str | None = None,
                     csg_workdir: str | None = None,
                     out_dir: str | None = None,
                     export_maps: str | None = None) -> str | None:
  """Evaluates every run, and with two or more runs writes their side-by-side report.

  `workdirs`: runs of any methods (STD, CSG, PICNN, ...); `std_workdir` and `csg_workdir`: an
  STD and a CSG run, checked to be those, placed first. The runs are checked before any is
  loaded, so a mistyped path fails at once. `export_maps`: a folder for every run's explanation
  maps (<folder>/<run workdir name>.npz; see evaluate_run). Returns the side-by-side markdown's
  path (default folder: <the last run>/eval), or None for one run.
  """
  pair = (std_workdir, csg_workdir)
  if any(pair) and not all(pair):
    raise CSGError("--std_workdir and --csg_workdir go together; give both, or use --workdir")
  if not workdirs and not any(pair):
    raise CSGError("no run given: pass --workdir W (repeatable), or --std_workdir and "
                   "--csg_workdir")
  for w in list(workdirs) + [p for p in pair if p]:
    if not fileio.isdir(w):
      raise CSGError(f"workdir {w!r} does not exist; pass the --workdir of a training run")
  if all(pair):
    methods = [_method_of(w) for w in pair]
    if methods != ["std", "csg"] and None not in methods:
      raise CSGError(f"--std_workdir is a {methods[0]} run and --csg_workdir a {methods[1]} "
                     "run: pass an STD run and a CSG run, in that order")
  ordered = [p for p in pair if p] + [w for w in workdirs if w not in pair]
  results = {w: evaluate_run(w, cfg, export_maps=export_maps) for w in ordered}
  if len(ordered) < 2:
    return None
  labels = run_labels({w: results[w][0]["method"] for w in ordered})
  out_dir = out_dir or fileio.join(ordered[-1], "eval")
  text, written = compare({labels[w]: results[w][0] for w in ordered},
                          {labels[w]: results[w][1] for w in ordered}, out_dir)
  path = fileio.join(out_dir, written[0])
  log(f"\n{text}\nside-by-side report: {path} (+ {', '.join(written[1:])})")
  return path


def run_labels(methods: Mapping[str, str]) -> dict[str, str]:
  """{workdir: label}: the method in capitals ("STD", "PICNN"), with the workdir's name added
  where two runs share a method."""
  counts = {}
  for m in methods.values():
    counts[m] = counts.get(m, 0) + 1
  return {w: m.upper() if counts[m] == 1 else f"{m.upper()} ({fileio.name(w)})"
          for w, m in methods.items()}


# ---------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------


def evaluate_run(workdir: str, cfg, *, devices=None,
                 export_maps: str | None = None) -> tuple[Report, Curves]:
  """Loads a run, runs the applications, writes W/eval/*.

  `export_maps`: a folder; with object masks, the explanation maps, masks, labels, predictions
  and images go to <export_maps>/<run workdir name>.npz (explanation_quality).

  Returns (report, curves): the JSON-able report and the detection ROC curves, for the
  side-by-side figure.
  """
  # Settings are checked before anything is loaded or computed.
  localization.validate_config(cfg.localization, 0)
  attacks.validate_config(cfg.attacks)
  detection.validate_config(cfg.detection)
  explanation_quality.validate_config(cfg.explanations)
  start = time.perf_counter()
  run = runs.load_run(workdir, devices=devices)
  config, dataset = run.config, run.dataset
  method = methods.for_config(config)
  gate = method.class_matrix(run.state.gates)
  num_devices = run.mesh.devices.size
  names = list(dataset.class_names)
  out_dir = fileio.join(workdir, "eval")
  fileio.makedirs(out_dir)
  log(f"[{workdir}] {config.method} {config.model.name} on {dataset.name}, step {run.step}: "
      f"{len(dataset.splits['test'])} test images")

  def check_batch(size, field):
    if size % num_devices:
      raise CSGError(f"app.{field}={size} must be a multiple of the {num_devices} devices; set "
                     f"--app.{field}")

  report = {"workdir": fileio.name(workdir), "method": config.method,
            "model": config.model.name, "dataset": dataset.name, "step": int(run.step),
            "class_names": names, "gate_density": method.density(run.state.gates)}
  results_path = fileio.join(workdir, "results.json")
  if fileio.exists(results_path):
    report["mis"] = fileio.read_json(results_path).get("mis")

  # Clean predictions and features, and the forward+backward reference time. The attacks'
  # batch size throughout: the clean and attacked passes see the same batches.
  check_batch(cfg.attacks.batch_size, "attacks.batch_size")
  eval_fn = predict.make_eval_fn(run.model, run.mesh)
  clean = predict.evaluate(eval_fn, run.state, dataset, config, run.mesh,
                           batch_size=cfg.attacks.batch_size)
  labels = clean.pop("label")
  report["accuracy"] = float((clean["prediction"] == labels).mean())
  report["fwd_bwd_seconds"] = _time_fwd_bwd(run, cfg.attacks.batch_size)
  log(f"  clean accuracy {report['accuracy']:.4f}; one forward+backward pass over the test split "
      f"takes {report['fwd_bwd_seconds']:.2f} s")

  masks_path = _masks_path(config, dataset)
  if cfg.run_localization and masks_path is None:
    log("  localization skipped: the data set has no object masks (<data.path>/masks/"
        f"{config.data.test_split}.npy)")
  if cfg.run_localization and masks_path is not None:
    check_batch(cfg.localization.batch_size, "localization.batch_size")
    report["localization"] = _localization(run, cfg, masks_path, report["fwd_bwd_seconds"],
                                           out_dir, workdir)
  if cfg.run_explanations and masks_path is not None:
    log("  explanations: localization, faithfulness, sanity check, dissection")
    export_path = (fileio.join(export_maps, fileio.name(workdir) + ".npz") if export_maps
                   else None)
    report["explanations"] = explanation_quality.evaluate(
        run, np.load(masks_path, mmap_mode="r"), cfg.explanations, workdir=workdir,
        export_path=export_path, out_dir=out_dir)
  curves = {}
  if cfg.run_adversarial:
    report["adversarial"], curves = _adversarial(run, cfg, eval_fn, clean, labels, gate)
    panels = {f"{a.upper()} ε={e * 255:.0f}/255": {k: (v["fpr"], v["tpr"], v["auc"])
                                                  for k, v in det.items()}
              for (a, e), det in curves.items()}
    plots.roc_figure(fileio.join(out_dir, "roc.png"), panels,
                     title=f"{config.method.upper()} detection ROC ({dataset.name})")

  report["seconds"] = time.perf_counter() - start
  fileio.write_json_atomic(fileio.join(out_dir, "applications.json"), report)
  fileio.write_text_atomic(fileio.join(out_dir, "applications.md"),
                           markdown_report({config.method.upper(): report}))
  if "localization" in report:
    plots.localization_iou_figure(fileio.join(out_dir, "localization.png"),
                                  {config.method.upper(): report})
  log(f"  wrote {out_dir}/applications.json, applications.md and figures "
      f"({report['seconds']:.0f} s)")
  return report, curves


def _localization(run, cfg, masks_path, fwd_bwd_seconds, out_dir, workdir) -> Report:
  """GradMap / CAM / ActivMap over the test split, and the example figure."""
  config, dataset, model = run.config, run.dataset, run.model
  variables = run.state.variables()
  names = list(dataset.class_names)
  object_masks = np.load(masks_path, mmap_mode="r")
  log(f"  localization ({', '.join(cfg.localization.methods)}) with masks {masks_path}")
  loc = localization.evaluate_localization(
      model, variables,
      localization.mask_batches(dataset, config.data, object_masks,
                                batch_size=cfg.localization.batch_size, split="test"),
      num_classes=dataset.num_classes, image_hw=dataset.image_shape[:2],
      config=cfg.localization, class_names=names,
      put=lambda batch: sharding.to_global(batch, run.mesh))
  t = loc["timings"]
  t["total_s"] = t["profile_s"] + t.get("activmap_thresholds_s", 0.0) + t["main_s"]
  t["total_over_fwd_bwd"] = t["total_s"] / fwd_bwd_seconds
  log("  " + "; ".join(f"{m} IoU {loc[m]['iou']:.4f} AP {loc[m]['ap']:.4f}"
                       for m in localization.METHODS if m in loc)
      + f" ({t['total_s']:.1f} s = {t['total_over_fwd_bwd']:.1f}x one forward+backward pass)")
  if cfg.num_examples:
    examples = localization.example_maps(
        model, variables, dataset, config.data, object_masks, config=cfg.localization,
        top_filters=np.asarray(loc["gradmap"]["top_filters"]) if "gradmap" in loc else None,
        thresholds=np.asarray(loc["activmap"]["thresholds"]) if "activmap" in loc else None,
        num=cfg.num_examples)
    plots.localization_examples_figure(fileio.join(out_dir, "localization_examples.png"),
                                       examples, names,
                                       title=f"{config.method.upper()}: {workdir}")
  return loc


def _adversarial(run, cfg, eval_fn, clean, labels, gate):
  """Every attack at every ε: accuracy under attack and the detectors' AUCs (and curves)."""
  config = run.config
  fgsm_fn, pgd_fn = attacks.make_attack_fns(
      run.model, *run.dataset.statistics, pgd_steps=cfg.attacks.pgd_steps,
      random_start=cfg.attacks.pgd_random_start)
  rows, curves = [], {}
  for name in cfg.attacks.attacks:
    for eps in cfg.attacks.epsilons:
      start = time.perf_counter()
      step = attacks.pgd_step_size(cfg.attacks, eps)
      base_key, batch_index = jax.random.PRNGKey(cfg.attacks.seed), itertools.count()

      def attacked_eval(state, b, name=name, eps=eps, step=step, base_key=base_key,
                        batch_index=batch_index):
        """eval_fn on the attacked images of batch b."""
        variables = state.variables()
        if name == "fgsm":
          adv = fgsm_fn(variables, b["image"], b["label"], eps)
        else:  # a key per batch: the random starts do not depend on how batches are sharded
          key = jax.random.fold_in(base_key, next(batch_index))
          adv = pgd_fn(variables, b["image"], b["label"], eps, step, key)
        return eval_fn(state, {**b, "image": adv})

      attacked = predict.evaluate(attacked_eval, run.state, run.dataset, config, run.mesh,
                                  batch_size=cfg.attacks.batch_size)
      attacked.pop("label")
      det = detection.evaluate_detection(clean, attacked, labels, run.dataset.num_classes,
                                         gate=gate, config=cfg.detection)
      row = {"attack": name, "epsilon": float(eps), "epsilon_255": float(eps * 255),
             "step_size": float(step) if name == "pgd" else None,
             "steps": cfg.attacks.pgd_steps if name == "pgd" else 1,
             "random_start": bool(cfg.attacks.pgd_random_start) and name == "pgd",
             "accuracy": float((attacked["prediction"] == labels).mean()),
             "seconds": time.perf_counter() - start,
             "detection": {k: {"auc": v["auc"], "num_clean": v["num_clean"],
                               "num_adversarial": v["num_adversarial"]}
                           for k, v in det.items()}}
      rows.append(row)
      curves[(name, float(eps))] = det
      aucs = ", ".join(f"{k} {v['auc']:.3f}" for k, v in row["detection"].items())
      log(f"  {name} eps={eps * 255:.1f}/255: accuracy {row['accuracy']:.4f}; detection AUC "
          f"{aucs} ({row['seconds']:.1f} s)")
      warning = few_samples_warning(row["detection"])
      if warning:
        log(f"  warning: {warning}")
  return rows, curves


def few_samples_warning(detection: Mapping[str, Mapping[str, Any]]) -> str | None:
  """A warning when some detector's AUC was scored on fewer than MIN_DETECTION_SAMPLES clean or
  adversarial examples (e.g. one successful attack), else None."""
  fewest = min(min(v["num_clean"], v["num_adversarial"]) for v in detection.values())
  if fewest >= MIN_DETECTION_SAMPLES:
    return None
  return (f"detection AUCs scored on as few as {fewest} clean or adversarial example(s) "
          f"(fewer than {MIN_DETECTION_SAMPLES}) say little; evaluate on more test images")


def _method_of(workdir: str) -> str | None:
  """The method in a workdir's config.json, or None (load_run then reports what is missing)."""
  try:
    return runs.read_config(workdir).get("method")
  except (CSGError, OSError, ValueError):
    return None


def _time_fwd_bwd(run, batch_size: int, repeats: int = 3) -> float:
  """Seconds of one forward + backward (input gradient of the CE loss) over the test split.

  The yardstick of the localization cost. Compiled on the first batch first; the median of
  `repeats` full passes (a shared machine makes single timings noisy).
  """
  model, variables = run.model, run.state.variables()

  @jax.jit
  def grad_fn(v, x, y):
    def loss(x):
      logits = model.apply(v, x, train=False)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return jax.grad(loss)(x)

  def batches():
    for batch in data_lib.eval_batches(run.dataset, run.config.data, split="test",
                                       global_batch_size=batch_size):
      yield sharding.to_global({"image": batch["image"], "label": batch["label"]}, run.mesh)

  first = next(iter(batches()))
  jax.block_until_ready(grad_fn(variables, first["image"], first["label"]))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for b in batches():
      out = grad_fn(variables, b["image"], b["label"])
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return float(sorted(times)[len(times) // 2])


def _masks_path(config, dataset) -> str | None:
  """The test split's object masks where the data source has them (<data.path>/masks/<test
  split>.npy beside a folder; the voc_part_released cache); else None."""
  return sources.get(config.data.source).object_masks_path(config.data, dataset, "test")


# ---------------------------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------------------------


def markdown_report(reports: dict[str, Report]) -> str:
  """Markdown tables with one column per run (e.g. {"STD": report, "CSG": report})."""
  runs = list(reports)
  head = "| | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs) + "\n"
  lines = ["## Runs\n", head.rstrip("\n")]
  for label, key, digits in (("test accuracy", "accuracy", 4), ("MIS", "mis", 4),
                             ("gate L1 density", "gate_density", 4), ("step", "step", 0)):
    lines.append(f"| {label} | " + " | ".join(number(reports[r].get(key), digits) for r in runs)
                 + " |")
  lines.append("| workdir | " + " | ".join(f"`{reports[r]['workdir']}`" for r in runs) + " |")

  if all("localization" in reports[r] for r in runs):
    lines += ["", "## Localization (test split)", "", head.rstrip("\n")]
    locs = {r: reports[r]["localization"] for r in runs}
    rows = [("GradMap IoU", "gradmap", "iou"), ("GradMap AP@20 (IoU ≥ 0.2)", "gradmap", "ap"),
            ("CAM IoU", "cam", "iou"), ("CAM AP (IoU > 0.3)", "cam", "ap"),
            ("ActivMap IoU (related filters)", "activmap", "iou"),
            ("ActivMap AP (mean filter score)", "activmap", "ap")]
    for label, method, key in rows:
      if all(method in locs[r] for r in runs):
        lines.append(f"| {label} | " + " | ".join(number(locs[r][method][key]) for r in runs)
                     + " |")
    lines.append("| time (s) / × one fwd+bwd pass | " + " | ".join(
        f"{locs[r]['timings']['total_s']:.1f} / {locs[r]['timings']['total_over_fwd_bwd']:.1f}×"
        for r in runs) + " |")
    names = reports[runs[0]]["class_names"]
    for method, title in (("gradmap", "GradMap"), ("cam", "CAM")):
      if not all(method in locs[r] for r in runs):
        continue
      lines += ["", f"### {title} per class (IoU / AP)", "",
                "| class | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
      for name in names:
        lines.append(f"| {name} | " + " | ".join(
            f"{number(locs[r][method]['per_class'][name]['iou'])} / "
            f"{number(locs[r][method]['per_class'][name]['ap'])}" for r in runs) + " |")
    if all("activmap" in locs[r] for r in runs):
      lines += ["", "### ActivMap per class (related filters: number / AP / IoU)", "",
                "| class | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
      for name in names + ["total"]:
        cells = []
        for r in runs:
          a = locs[r]["activmap"]
          c = ({"num_filters": a["num_filters"], "ap": a["ap"], "iou": a["iou"]}
               if name == "total" else a["per_class"][name])
          cells.append(f"{c['num_filters']} / {number(c['ap'])} / {number(c['iou'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

  lines += explanation_rows(reports)

  if all("adversarial" in reports[r] for r in runs):
    lines += ["", "## Adversarial samples (test split)", "",
              "Accuracy under attack; n adv: attacked images scored (held-out half; with "
              "detection.successful_only, those the attack flips from right to wrong); "
              "detection ROC-AUC of clean vs attacked on the held-out half.", ""]
    detectors = []
    for r in runs:
      for row in reports[r]["adversarial"]:
        for d in row["detection"]:
          if (r, d) not in detectors:
            detectors.append((r, d))
    cols = ([f"{r} accuracy" for r in runs] + [f"{r} n adv" for r in runs]
            + [f"{r} {d.replace('_', ' ')}" for r, d in detectors])
    lines += ["| attack | ε | " + " | ".join(cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    keys = [(row["attack"], row["epsilon"]) for row in reports[runs[0]]["adversarial"]]
    for attack, eps in keys:
      rows = {r: next((x for x in reports[r]["adversarial"]
                       if x["attack"] == attack and x["epsilon"] == eps), None) for r in runs}
      cells = [number(rows[r]["accuracy"]) if rows[r] else "–" for r in runs]
      cells += [str(next(iter(rows[r]["detection"].values()))["num_adversarial"])
                if rows[r] else "–" for r in runs]
      for r, d in detectors:
        cells.append(number(rows[r]["detection"].get(d, {}).get("auc"), 3) if rows[r] else "–")
      lines.append(f"| {attack.upper()} | {eps * 255:.0f}/255 | " + " | ".join(cells) + " |")
    pgd = [x for x in reports[runs[0]]["adversarial"] if x["attack"] == "pgd"]
    if pgd:
      start = " from a uniform random start" if pgd[0]["random_start"] else ""
      sizes = ", ".join(f"{x['step_size'] * 255:.2f}/255 at ε = {x['epsilon_255']:.0f}/255"
                        for x in pgd)
      lines += ["", f"PGD: {pgd[0]['steps']} steps{start}; step size {sizes}."]
  return "\n".join(lines) + "\n"


def explanation_rows(reports: Mapping[str, Report]) -> list[str]:
  """Markdown lines of the runs' explanation judgments ('–' for a run without them); [] when no
  run has them."""
  runs = [r for r in reports]
  ex = {r: reports[r].get("explanations") for r in runs}
  if not any(ex.values()):
    return []
  titles = explanation_quality.MAP_TITLES
  lines = ["", "## Explanations (test split)", "",
           "Maps of the label class: CAM, gradient map (summed top filters), class filters "
           "(the filters the method assigns to the class); random: a random deletion order. "
           "Definitions: docs/applications.md, \"Judging explanations\".", "",
           "| | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]

  def row(label, cell):
    cells = [cell(ex[r]) if ex[r] else "–" for r in runs]
    if any(c != "–" for c in cells):
      lines.append(f"| {label} | " + " | ".join(cells) + " |")

  def loc(t, m):
    return lambda e: number(e["localization"].get(t, {}).get(m), 3)

  types = [t for t in explanation_quality.MAP_TYPES if any(e and t in e["map_types"]
                                                           for e in ex.values())]
  for m, label in (("pointing_game", "pointing game"), ("energy_pointing_game", "energy pointing"
                   " game"), ("relevance_rank_accuracy", "relevance rank accuracy")):
    for t in types:
      row(f"{label} ({titles[t]})", loc(t, m))

  def faith(t, kind):
    def cell(e):
      orders = (e.get("faithfulness") or {}).get("orders", {})
      if t not in orders:
        return "–"
      return (f"{number(orders[t][f'{kind}_auc'], 3)} (random "
              f"{number(orders['random'][f'{kind}_auc'], 3)})")
    return cell

  for kind, better in (("deletion", "lower is better"), ("insertion", "higher is better")):
    for t in types:
      row(f"{kind} AUC ({titles[t]}; {better})", faith(t, kind))
  row("faithfulness s / image / map", lambda e: number(
      np.mean([o["seconds_per_image"] for o in e["faithfulness"]["orders"].values()]), 4)
      if e.get("faithfulness") else "–")
  for t in explanation_quality.SANITY_MAP_TYPES:
    def sanity(e, t=t):
      v = (e.get("sanity") or {}).get("verdict", {}).get(t)
      if v is None:
        return "–"
      return f"{'pass' if v['passed'] else 'FAIL'} (\\|ρ\\| {number(v['abs_spearman'], 2)})"
    row(f"sanity check ({titles[t]})", sanity)
  row("detectors (classes)", lambda e: f"{e['dissection']['num_detectors']}/"
      f"{e['dissection']['num_filters']} ({e['dissection']['num_classes_detected']})")
  row("detector class = assigned class",
      lambda e: number(e["dissection"]["detector_class_matches_assigned"], 3))
  notes = [f"{r}: {n}" for r in runs if ex[r] for n in ex[r]["notes"]]
  if notes:
    lines += [""] + [f"Note: {n}" for n in notes]
  return lines


def compare(reports: Mapping[str, Report], curves: Mapping[str, Curves],
            out_dir: str) -> tuple[str, list[str]]:
  """Side-by-side markdown, JSON and figures of runs {label: report} (e.g. STD, CSG, PICNN);
  returns the markdown and the names of the files written (figures only for the applications
  every run has). Files are named applications_<a>_vs_<b>...: applications_std_vs_csg.md for
  an STD and a CSG run."""
  fileio.makedirs(out_dir)
  reports = dict(reports)
  labels = list(reports)
  stem = "_vs_".join(_file_part(label) for label in labels)
  title = " vs ".join(labels)
  text = f"# {title}: localization and adversarial detection\n\n" + markdown_report(reports)
  fileio.write_text_atomic(fileio.join(out_dir, f"applications_{stem}.md"), text)
  fileio.write_json_atomic(fileio.join(out_dir, f"applications_{stem}.json"), reports)
  written = [f"applications_{stem}.md", f"applications_{stem}.json"]
  if all("localization" in r for r in reports.values()):
    plots.localization_iou_figure(fileio.join(out_dir, f"localization_{stem}.png"), reports)
    written.append(f"localization_{stem}.png")
  panels = {}
  for key in curves[labels[0]]:
    if not all(key in curves[label] for label in labels):
      continue
    attack, eps = key
    panel = {}
    for label in labels:
      for det, v in curves[label][key].items():
        panel[f"{label} {det.replace('_', ' ')}"] = (v["fpr"], v["tpr"], v["auc"])
    panels[f"{attack.upper()} ε={eps * 255:.0f}/255"] = panel
  if panels:
    plots.roc_figure(fileio.join(out_dir, f"roc_{stem}.png"), panels,
                     title=f"Adversarial-sample detection: {title}")
    written.append(f"roc_{stem}.png")
  return text, written


def _file_part(label: str) -> str:
  """"STD" -> "std"; "CSG (run_2)" -> "csg_run_2"."""
  return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_").replace("__", "_")
