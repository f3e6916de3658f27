r"""The paper's applications on trained runs: localization and adversarial-sample detection.

  python launch/applications.py --std_workdir workdirs/shapes_std --csg_workdir workdirs/shapes_csg
  python launch/applications.py --workdir W                    # one run
  python launch/applications.py --workdir W --app.attacks.epsilons="(0.0314,)" \
      --app.localization.methods="('cam',)"

For each run: localization (GradMap, CAM, ActivMap; only when the data set has object masks,
i.e. `<data.path>/masks/<test split>.npy`), FGSM/PGD attacks and detection ROC-AUCs. Writes
`W/eval/applications.json`, `W/eval/applications.md` and PNG figures; with an STD and a CSG run,
also a side-by-side report (`--out`, default `<csg workdir>/eval/`). Definitions and protocol:
docs/applications.md.
"""

import itertools
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)  # run from a checkout without `pip install -e .` too

# pylint: disable=g-import-not-at-top,wrong-import-position  (after the sys.path line)
import jax
import numpy as np
import optax

from csg_jax import attacks
from csg_jax import cli
from csg_jax import data as data_lib
from csg_jax import detection
from csg_jax import localization
from csg_jax import parallel
from csg_jax import train
from csg_jax.errors import CSGError
# pylint: enable=g-import-not-at-top,wrong-import-position


def app_config() -> ml_collections.ConfigDict:
  """Every application setting; override with --app.<field>=<value>."""
  c = ml_collections.ConfigDict()
  c.localization = localization.default_config()  # GradMap / CAM / ActivMap settings
  c.attacks = attacks.default_config()  # FGSM / PGD settings
  c.detection = detection.default_config()  # detector protocol
  c.run_localization = True  # run localization when the data set has object masks
  c.run_adversarial = True  # run attacks and detection
  c.num_examples = 8  # test images in the localization example figure (0: no figure)
  return c


_WORKDIRS = flags.DEFINE_multi_string("workdir", [], "A trained workdir (repeatable).")
_STD = flags.DEFINE_string("std_workdir", None, "The STD run of a side-by-side comparison.")
_CSG = flags.DEFINE_string("csg_workdir", None, "The CSG run of a side-by-side comparison.")
_OUT = flags.DEFINE_string("out", None, "Folder of the side-by-side report (default: "
                           "<csg_workdir>/eval).")


_APP = config_flags.DEFINE_config_dict("app", app_config(), "Application settings: "
                                       "--app.<field>=<value>.", lock_config=True)


def log(message: str) -> None:
  print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------


def evaluate_run(workdir: str, cfg, *, devices=None):
  """Loads a run, runs the applications, writes W/eval/*.

  Returns (report, curves): the JSON-able report and {(attack, ε): detection results with ROC
  curves} for the side-by-side figure.
  """
  # Settings are checked before anything is loaded or computed.
  localization.validate_config(cfg.localization, 0)
  attacks.validate_config(cfg.attacks)
  detection.validate_config(cfg.detection)
  start = time.perf_counter()
  run = train.load_run(workdir, devices=devices)
  config, dataset, model = run.config, run.dataset, run.model
  variables = run.state.variables()
  gate = run.state.host_gate()
  num_devices = run.mesh.devices.size
  names = list(dataset.class_names)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  log(f"[{workdir}] {config.method} {config.model.name} on {dataset.name}, step {run.step}: "
      f"{len(dataset.splits['test'])} test images")

  def put(batch):
    return parallel.to_global(batch, run.mesh)

  def check_batch(size, field):
    if size % num_devices:
      raise CSGError(f"app.{field}={size} must be a multiple of the {num_devices} devices; set "
                     f"--app.{field}")

  report = {"workdir": os.path.abspath(workdir), "method": config.method,
            "model": config.model.name, "dataset": dataset.name, "step": int(run.step),
            "class_names": names, "gate_density": None if gate is None else float(gate.mean())}
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path):
    with open(results_path) as f:
      report["mis"] = json.load(f).get("mis")

  # Clean predictions and features, and the forward+backward reference time.
  fwd = jax.jit(lambda v, x: {k: o for k, o in model.apply(v, x, train=False).items()
                              if k in ("logits", "features")})
  batch_size = cfg.attacks.batch_size
  check_batch(batch_size, "attacks.batch_size")
  batches = lambda: _eval_batches(dataset, config, batch_size)
  clean = _collect(lambda b: fwd(variables, b["image"]), batches, put)
  labels = clean.pop("label")
  report["accuracy"] = float((clean["prediction"] == labels).mean())
  report["fwd_bwd_seconds"] = _time_fwd_bwd(model, variables, batches, put)
  log(f"  clean accuracy {report['accuracy']:.4f}; one forward+backward pass over the test split "
      f"takes {report['fwd_bwd_seconds']:.2f} s")

  masks_path = _masks_path(config)
  if cfg.run_localization and masks_path is None:
    log("  localization skipped: the data set has no object masks (<data.path>/masks/"
        f"{config.data.test_split}.npy)")
  if cfg.run_localization and masks_path is not None:
    check_batch(cfg.localization.batch_size, "localization.batch_size")
    report["localization"] = _localization(run, cfg, masks_path, put, report["fwd_bwd_seconds"],
                                           out_dir, workdir)
  curves = {}
  if cfg.run_adversarial:
    report["adversarial"], curves = _adversarial(run, cfg, fwd, batches, put, clean, labels, gate)
    panels = {f"{a.upper()} ε={e * 255:.0f}/255": {k: (v["fpr"], v["tpr"], v["auc"])
                                                  for k, v in det.items()}
              for (a, e), det in curves.items()}
    detection.roc_figure(panels, os.path.join(out_dir, "roc.png"),
                         title=f"{config.method.upper()} detection ROC ({dataset.name})")

  report["seconds"] = time.perf_counter() - start
  _write_json(os.path.join(out_dir, "applications.json"), report)
  with open(os.path.join(out_dir, "applications.md"), "w") as f:
    f.write(markdown_report({config.method.upper(): report}))
  if "localization" in report:
    localization_figure({config.method.upper(): report}, os.path.join(out_dir, "localization.png"))
  log(f"  wrote {out_dir}/applications.json, applications.md and figures "
      f"({report['seconds']:.0f} s)")
  return report, curves


def _localization(run, cfg, masks_path, put, fwd_bwd_seconds, out_dir, workdir) -> dict:
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
      config=cfg.localization, class_names=names, put=put, log=log)
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
    localization.examples_figure(examples, names,
                                 os.path.join(out_dir, "localization_examples.png"),
                                 title=f"{config.method.upper()}: {workdir}")
  return loc


def _adversarial(run, cfg, fwd, batches, put, clean, labels, gate):
  """Every attack at every ε: accuracy under attack and the detectors' AUCs (and curves)."""
  config, model = run.config, run.model
  variables = run.state.variables()
  fgsm_fn, pgd_fn = attacks.make_attack_fns(
      model, config.data.mean, config.data.std, pgd_steps=cfg.attacks.pgd_steps,
      random_start=cfg.attacks.pgd_random_start)
  rows, curves = [], {}
  for name in cfg.attacks.attacks:
    for eps in cfg.attacks.epsilons:
      start = time.perf_counter()
      step = attacks.pgd_step_size(cfg.attacks, eps)
      base_key, batch_index = jax.random.PRNGKey(cfg.attacks.seed), itertools.count()

      def attack(b, name=name, eps=eps, step=step, base_key=base_key, batch_index=batch_index):
        if name == "fgsm":
          adv = fgsm_fn(variables, b["image"], b["label"], eps)
        else:  # a key per batch: the random starts do not depend on how batches are sharded
          key = jax.random.fold_in(base_key, next(batch_index))
          adv = pgd_fn(variables, b["image"], b["label"], eps, step, key)
        return fwd(variables, adv)

      attacked = _collect(attack, batches, put)
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
  return rows, curves


def _method_of(workdir):
  """The method in a workdir's config.json, or None (load_run then reports what is missing)."""
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      return json.load(f).get("method")
  except (OSError, ValueError):
    return None


def _eval_batches(dataset, config, batch_size):
  return data_lib.eval_batches(dataset, config.data, split="test", global_batch_size=batch_size)


def _collect(fn, batches, put) -> dict:
  """Runs fn on every batch; returns numpy 'prediction', 'features', 'label' of the real rows."""
  chunks = []
  for batch in batches():
    out = jax.device_get(fn(put({"image": batch["image"], "label": batch["label"]})))
    keep = np.asarray(batch["mask"], bool)
    chunks.append({"prediction": np.asarray(out["logits"]).argmax(-1)[keep],
                   "features": np.asarray(out["features"], np.float32)[keep],
                   "label": np.asarray(batch["label"])[keep]})
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _time_fwd_bwd(model, variables, batches, put, repeats: int = 3) -> float:
  """Seconds of one forward + backward (input gradient of the CE loss) over the test split.

  Compiled on the first batch first; the median of `repeats` full passes (a shared machine
  makes single timings noisy).
  """
  @jax.jit
  def grad_fn(v, x, y):
    def loss(x):
      logits = model.apply(v, x, train=False)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return jax.grad(loss)(x)

  first = next(iter(batches()))
  first = put({"image": first["image"], "label": first["label"]})
  jax.block_until_ready(grad_fn(variables, first["image"], first["label"]))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = None
    for batch in batches():
      b = put({"image": batch["image"], "label": batch["label"]})
      out = grad_fn(variables, b["image"], b["label"])
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return float(sorted(times)[len(times) // 2])


def _masks_path(config):
  if config.data.source != "folder" or not config.data.path:
    return None
  path = os.path.join(os.path.expanduser(config.data.path), "masks",
                      f"{config.data.test_split}.npy")
  return path if os.path.exists(path) else None


def _write_json(path, obj):
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------------------------


def _fmt(x, digits=4):
  if x is None or (isinstance(x, float) and x != x):
    return "–"
  return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown_report(reports: dict) -> str:
  """Markdown tables with one column per run (e.g. {"STD": report, "CSG": report})."""
  runs = list(reports)
  head = "| | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs) + "\n"
  lines = ["## Runs\n", head.rstrip("\n")]
  for label, key, digits in (("test accuracy", "accuracy", 4), ("MIS", "mis", 4),
                             ("gate L1 density", "gate_density", 4), ("step", "step", 0)):
    lines.append(f"| {label} | " + " | ".join(_fmt(reports[r].get(key), digits) for r in runs)
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
        lines.append(f"| {label} | " + " | ".join(_fmt(locs[r][method][key]) for r in runs)
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
            f"{_fmt(locs[r][method]['per_class'][name]['iou'])} / "
            f"{_fmt(locs[r][method]['per_class'][name]['ap'])}" for r in runs) + " |")
    if all("activmap" in locs[r] for r in runs):
      lines += ["", "### ActivMap per class (related filters: number / AP / IoU)", "",
                "| class | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
      for name in names + ["total"]:
        cells = []
        for r in runs:
          a = locs[r]["activmap"]
          c = ({"num_filters": a["num_filters"], "ap": a["ap"], "iou": a["iou"]}
               if name == "total" else a["per_class"][name])
          cells.append(f"{c['num_filters']} / {_fmt(c['ap'])} / {_fmt(c['iou'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

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
      cells = [_fmt(rows[r]["accuracy"]) if rows[r] else "–" for r in runs]
      cells += [str(next(iter(rows[r]["detection"].values()))["num_adversarial"])
                if rows[r] else "–" for r in runs]
      for r, d in detectors:
        cells.append(_fmt(rows[r]["detection"].get(d, {}).get("auc"), 3) if rows[r] else "–")
      lines.append(f"| {attack.upper()} | {eps * 255:.0f}/255 | " + " | ".join(cells) + " |")
    pgd = [x for x in reports[runs[0]]["adversarial"] if x["attack"] == "pgd"]
    if pgd:
      start = " from a uniform random start" if pgd[0]["random_start"] else ""
      sizes = ", ".join(f"{x['step_size'] * 255:.2f}/255 at ε = {x['epsilon_255']:.0f}/255"
                        for x in pgd)
      lines += ["", f"PGD: {pgd[0]['steps']} steps{start}; step size {sizes}."]
  return "\n".join(lines) + "\n"


def localization_figure(reports: dict, path: str) -> None:
  """Per-class IoU bars, one panel per method, one bar colour per run."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  runs = list(reports)
  names = reports[runs[0]]["class_names"]
  methods = [m for m in ("gradmap", "cam", "activmap")
             if all(m in reports[r]["localization"] for r in runs)]
  fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False)
  width = 0.8 / len(runs)
  for ax, method in zip(axes[0], methods):
    for i, r in enumerate(runs):
      per = reports[r]["localization"][method]["per_class"]
      # A class no ActivMap filter relates to has no IoU: no bar (NaN), not a zero bar.
      vals = [per[n]["iou"] if per[n]["iou"] is not None else np.nan for n in names]
      total = reports[r]["localization"][method]["iou"]
      x = np.arange(len(names) + 1) + i * width
      ax.bar(x, vals + [total], width, label=f"{r} ({total:.3f})")
      if method == "activmap":  # how many filters each bar averages
        counts = [per[n]["num_filters"] for n in names]
        counts.append(reports[r]["localization"][method]["num_filters"])
        for xi, v, c in zip(x, vals + [total], counts):
          ax.text(xi, (0 if np.isnan(v) else v) + 0.02, str(c), ha="center", fontsize=6)
    ax.set_xticks(np.arange(len(names) + 1) + 0.4 - width / 2)
    ax.set_xticklabels(names + ["all"], rotation=45, ha="right", fontsize=8)
    ax.set(title={"gradmap": "GradMap IoU", "cam": "CAM IoU",
                  "activmap": "ActivMap IoU (number of related filters)"}[method], ylim=(0, 1))
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def compare(std: dict, csg: dict, std_curves: dict, csg_curves: dict, out_dir: str) -> str:
  """Side-by-side markdown, JSON and figures of an STD and a CSG run; returns the markdown."""
  os.makedirs(out_dir, exist_ok=True)
  reports = {"STD": std, "CSG": csg}
  text = "# STD vs CSG: localization and adversarial detection\n\n" + markdown_report(reports)
  with open(os.path.join(out_dir, "applications_std_vs_csg.md"), "w") as f:
    f.write(text)
  _write_json(os.path.join(out_dir, "applications_std_vs_csg.json"), reports)
  if "localization" in std and "localization" in csg:
    localization_figure(reports, os.path.join(out_dir, "localization_std_vs_csg.png"))
  panels = {}
  for key in std_curves:
    if key not in csg_curves:
      continue
    attack, eps = key
    panel = {}
    for label, curves in (("STD", std_curves[key]), ("CSG", csg_curves[key])):
      for det, v in curves.items():
        panel[f"{label} {det.replace('_', ' ')}"] = (v["fpr"], v["tpr"], v["auc"])
    panels[f"{attack.upper()} ε={eps * 255:.0f}/255"] = panel
  if panels:
    detection.roc_figure(panels, os.path.join(out_dir, "roc_std_vs_csg.png"),
                         title="Adversarial-sample detection: STD vs CSG")
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # keep library INFO chatter out of the progress output
  cfg = _APP.value
  with cli.user_errors():
    workdirs = list(_WORKDIRS.value)
    pair = (_STD.value, _CSG.value)
    if any(pair) and not all(pair):
      raise CSGError("--std_workdir and --csg_workdir go together; give both, or use --workdir")
    if not workdirs and not any(pair):
      raise CSGError("no run given: pass --workdir W, or --std_workdir and --csg_workdir")
    for w in workdirs + [p for p in pair if p]:
      if not os.path.isdir(w):
        raise CSGError(f"workdir {w!r} does not exist; pass the --workdir of a training run")
    if all(pair):
      methods = [_method_of(w) for w in pair]
      if methods != ["std", "csg"] and None not in methods:
        raise CSGError(f"--std_workdir is a {methods[0]} run and --csg_workdir a {methods[1]} "
                       "run: pass an STD run and a CSG run, in that order")
    start = time.perf_counter()
    results = {}
    for w in [p for p in pair if p] + workdirs:
      results[w] = evaluate_run(w, cfg)
    if all(pair):
      (std, std_curves), (csg, csg_curves) = results[pair[0]], results[pair[1]]
      out_dir = _OUT.value or os.path.join(pair[1], "eval")
      text = compare(std, csg, std_curves, csg_curves, out_dir)
      print("\n" + text, flush=True)
      log(f"side-by-side report: {os.path.join(out_dir, 'applications_std_vs_csg.md')} "
          f"(+ .json, localization_std_vs_csg.png, roc_std_vs_csg.png)")
    log(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  app.run(main)
