r"""The shapes applications over several seeds, for every method in the side-by-side reports that
benchmarks/applications_shapes.sh writes (one OUT folder per seed; STD, CSG, PICNN): mean ± sd
per method and the paired difference of every pair (later − earlier: CSG − STD, PICNN − STD,
PICNN − CSG) with its 95 % Student-t interval.

  for s in 0 1 2; do SEED=$s benchmarks/applications_shapes.sh workdirs/applications_shapes_s$s
  done
  python benchmarks/applications_seeds.py workdirs/applications_shapes_s0 \
      workdirs/applications_shapes_s1 workdirs/applications_shapes_s2

Prints markdown tables (runs, localization, detection ROC-AUC per attack and ε); the last line
printed is a JSON object with every figure.
"""

import argparse
import glob
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from csg_jax.experiments import statistics  # pylint: disable=g-import-not-at-top,wrong-import-position

RUN_ROWS = (("test accuracy", ("accuracy",)), ("MIS", ("mis",)))
LOCALIZATION_ROWS = (("GradMap IoU", ("localization", "gradmap", "iou")),
                     ("GradMap AP@20", ("localization", "gradmap", "ap")),
                     ("CAM IoU", ("localization", "cam", "iou")),
                     ("CAM AP", ("localization", "cam", "ap")),
                     ("ActivMap IoU", ("localization", "activmap", "iou")),
                     ("ActivMap AP", ("localization", "activmap", "ap")))

# The explanation-quality section (evaluation/explanation_quality.py), when the reports have it.
EXPLANATION_ROWS = (
    ("pointing game (CAM)", ("explanations", "localization", "cam", "pointing_game")),
    ("energy pointing game (CAM)", ("explanations", "localization", "cam",
                                         "energy_pointing_game")),
    ("pointing game (gradient map)", ("explanations", "localization", "gradmap", "pointing_game")),
    ("energy pointing game (gradient map)", ("explanations", "localization", "gradmap",
                                         "energy_pointing_game")),
    ("pointing game (class filters)", ("explanations", "localization", "filters", "pointing_game")),
    ("energy pointing game (class filters)", ("explanations", "localization", "filters",
                                         "energy_pointing_game")),
    ("deletion AUC (CAM)", ("explanations", "faithfulness", "orders", "cam",
                                  "deletion_auc")),
    ("deletion AUC (gradient map)", ("explanations", "faithfulness", "orders", "gradmap",
                                  "deletion_auc")),
    ("deletion AUC (class filters)", ("explanations", "faithfulness", "orders", "filters",
                                  "deletion_auc")),
    ("deletion AUC (random order)", ("explanations", "faithfulness", "orders", "random",
                                  "deletion_auc")),
    ("dissection detectors", ("explanations", "dissection", "num_detectors")),
    ("dissection classes detected", ("explanations", "dissection", "num_classes_detected")),
)


def _get(report, path):
  for key in path:
    report = report[key]
  return report


def _detection_rows(runs):
  """[(label, getter)]: per attack row, the accuracy under attack and every detector's AUC that
  any run has (the gate's: CSG and PICNN, whose class matrix it reads)."""
  rows = []
  for row in runs[0]["adversarial"]:
    attack, eps = row["attack"], row["epsilon"]
    pick = lambda r, a=attack, e=eps: next(x for x in r["adversarial"]
                                           if x["attack"] == a and x["epsilon"] == e)
    name = f"{attack.upper()} {eps * 255:.0f}/255"
    rows.append((f"{name} accuracy", lambda r, p=pick: p(r)["accuracy"]))
    detectors = []
    for run in runs:
      detectors += [d for d in pick(run)["detection"] if d not in detectors]
    for det in detectors:
      rows.append((f"{name} AUC {det.replace('_', ' ')}",
                   lambda r, p=pick, d=det: p(r)["detection"].get(d, {}).get("auc")))
  return rows


def _cell(stat):
  if stat is None:
    return "–"
  return f"{stat['mean']:.4f} ± {stat['sd']:.4f}" if stat["sd"] is not None else \
      f"{stat['mean']:.4f}"


def _diff_cell(diff):
  if diff is None or diff["low"] is None:
    return "–"
  return f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("outs", nargs="+", help="applications_shapes.sh OUT folders, one a seed")
  args = parser.parse_args(argv)
  reports = []
  for out in args.outs:
    found = sorted(glob.glob(os.path.join(out, "report", "applications_*.json")))
    if len(found) != 1:
      print(f"error: {os.path.join(out, 'report')} holds {len(found)} applications_*.json: run "
            f"benchmarks/applications_shapes.sh {out} first", file=sys.stderr)
      return 2
    with open(found[0]) as f:
      reports.append(json.load(f))
  labels = list(reports[0])
  if any(list(r) != labels for r in reports):
    print("error: the OUT folders compare different methods", file=sys.stderr)
    return 2
  pairs = statistics.method_pairs(labels)

  table_rows = [(label, lambda r, p=path: _get(r, p)) for label, path in RUN_ROWS]
  table_rows += [(label, lambda r, p=path: _get(r, p)) for label, path in LOCALIZATION_ROWS
                 if all("localization" in x[m] for x in reports for m in labels)]
  table_rows += [(label, lambda r, p=path: _get(r, p)) for label, path in EXPLANATION_ROWS
                 if all("explanations" in x[m] for x in reports for m in labels)]
  if all("adversarial" in x[m] for x in reports for m in labels):
    table_rows += _detection_rows([reports[0][m] for m in labels])
  result = {"seeds": len(reports), "outs": args.outs, "methods": labels, "rows": {}}
  print(f"{len(reports)} seeds; mean ± sd over seeds; differences: mean of the per-seed "
        "differences [95 % Student-t interval]")
  print("")
  diff_names = [f"{b} − {a}" for b, a in pairs]
  print("| | " + " | ".join(labels + diff_names) + " |")
  print("|---|" + "---|" * (len(labels) + len(pairs)))
  for label, get in table_rows:
    values = {m: [get(r[m]) if _has(r[m], get) else None for r in reports] for m in labels}
    stats = {m: (statistics.mean_sd(v) if None not in v else None) for m, v in values.items()}
    diffs = {f"{b}-{a}": (statistics.paired_difference(values[b], values[a])
                          if stats[a] and stats[b] else None) for b, a in pairs}
    result["rows"][label] = {"values": values, "differences": diffs}
    print(f"| {label} | " + " | ".join([_cell(stats[m]) for m in labels]
                                      + [_diff_cell(d) for d in diffs.values()]) + " |")
  print(json.dumps(result), flush=True)
  return 0


def _has(report, get):
  try:
    return get(report) is not None
  except (KeyError, StopIteration):
    return False


if __name__ == "__main__":
  sys.exit(main())
