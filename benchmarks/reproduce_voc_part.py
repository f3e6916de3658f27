r"""The paper's VOC Part runs in one command: ResNet-152 STD and CSG, evaluated, in one report.

Both start from ImageNet weights and train on the authors' released data with their released
procedure; both are evaluated and run through the two applications.

  python benchmarks/reproduce_voc_part.py --weights resnet152-394f9c45.pth \
      --data preprocessed_VOC_Part.zip                  # or the unzipped folder holding processed/

1. unzips --data (the authors' preprocessed_VOC_Part.zip, which VOCPart/starting.sh lines 17-19
   unzip into preprocessed_VOC_Part/, their __data__; only processed/metadata and the
   obj_img/obj_mask folders, which their VOCPart/VOC/VOCPart.py lines 41-47 read) into
   <cache_dir>/preprocessed_VOC_Part-<key>/, or reads an unzipped folder in place; the
   voc_part_released source reads it;
2. imports --weights (torchvision's ImageNet ResNet-152) into <root>/imagenet, as
   csg-import-torch does;
3. trains CSG with configs/voc_part_resnet152.py in <root>/csg and the released STD baseline (its
   std_config, configs/voc_part_resnet152_std.py) in <root>/std, both from <root>/imagenet, and
   compares them as csg-compare does (<root>/compare.md, compare.png);
4. runs localization (GradMap, CAM, ActivMap on the released object masks) and adversarial
   detection on both (<root>/applications/, and each run's eval/);
5. writes <root>/reproduce_voc_part.md and .json: our numbers beside the paper's where they are
   known to us.

A rerun reuses what is done: the import, the unzipped data, finished runs (an interrupted one
resumes), and the applications when their settings and both runs are unchanged. Progress lines
as it goes; the last line printed is a JSON object. The full schedule (151 epochs of ResNet-152)
is for a GPU; --model, --epochs, --image_size and --set make small runs (the test runs a
ResNet-18 at width 8 on a few 32x32 images in minutes on 2 CPU cores).
"""

import argparse
import ast
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runs from a checkout without `pip install -e .` too

# pylint: disable=g-import-not-at-top,wrong-import-position
from csg_jax.errors import CSGError
from csg_jax.log import log

CSG_CONFIG, STD_CONFIG = "voc_part_resnet152", "voc_part_resnet152_std"
# The paper's VOC Part numbers by "<method>.<metric>" (e.g. "csg.mis"): docs/csg-method.md gives
# none (only Table 1's CIFAR-10 row), so every paper cell of the report says so instead.
PAPER: dict[str, float] = {}
NOT_KNOWN = "not known to us"
# What the released archive holds that the voc_part_released source reads (part_mask/ is not).
_READ_MEMBERS = re.compile(r"(^|/)processed/(metadata|\d+x\d+/obj_img|\d+x\d+/obj_mask)/")
_COMPLETE = ".complete"  # marks a fully unzipped copy


# ---------------------------------------------------------------------------------------------
# Data: the released archive or folder.
# ---------------------------------------------------------------------------------------------


def release_root(folder: str) -> str:
  """The folder holding processed/: `folder` itself or its one subfolder that holds it."""
  if os.path.isdir(os.path.join(folder, "processed")):
    return folder
  found = sorted(d for d in os.listdir(folder)
                 if os.path.isdir(os.path.join(folder, d, "processed")))
  if len(found) != 1:
    several = " (several subfolders do)" if found else ""
    raise CSGError(f"{folder} holds no processed/ folder{several}: give the authors' "
                   "preprocessed_VOC_Part.zip or its unzipped folder, the one holding processed/")
  return os.path.join(folder, found[0])


def prepare_data(path: str, cache_dir: str) -> str:
  """The released data's folder (holding processed/): `path` when it is a folder; for the zip,
  its copy unzipped once into <cache_dir>/preprocessed_VOC_Part-<key> (key: the zip's SHA-1)."""
  if os.path.isdir(path):
    log(f"[1/5] data: {path}")
    return release_root(path)
  if not zipfile.is_zipfile(path):
    raise CSGError(f"--data {path} is neither a folder nor a zip archive: give the authors' "
                   "preprocessed_VOC_Part.zip or its unzipped folder, the one holding processed/")
  digest = hashlib.sha1()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 24), b""):
      digest.update(block)
  # Named by content: the same archive, wherever it is and whatever its name, is one data.path,
  # so a rerun after a new download of it reuses the runs.
  target = os.path.join(cache_dir, f"preprocessed_VOC_Part-{digest.hexdigest()[:12]}")
  if os.path.isfile(os.path.join(target, _COMPLETE)):
    log(f"[1/5] data: reusing {target} (unzipped from {path})")
    return release_root(target)
  with zipfile.ZipFile(path) as archive:
    members = [m for m in archive.infolist() if _READ_MEMBERS.search(m.filename)]
    unsafe = [m.filename for m in members
              if m.filename.startswith("/") or ".." in m.filename.split("/")]
    if unsafe:
      raise CSGError(f"{path}: member {unsafe[0]!r} would be written outside the folder it is "
                     "unzipped into; refusing to unzip it")
    if not members:
      raise CSGError(f"{path} holds no processed/metadata/ or processed/<S>x<S>/obj_img/: is it "
                     "the authors' preprocessed_VOC_Part.zip?")
    log(f"[1/5] data: unzipping {len(members)} entries of {path} into {target}")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix=".preprocessed_VOC_Part-")
    try:
      archive.extractall(tmp, members)
      open(os.path.join(tmp, _COMPLETE), "w").close()
      shutil.rmtree(target, ignore_errors=True)  # an earlier copy that never completed
      os.replace(tmp, target)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  return release_root(target)


# ---------------------------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------------------------


def parse_assignments(items: list[str], flag: str) -> dict:
  """{dotted field: value} of FIELD=VALUE strings, values read as Python literals when they
  are ones (4, 1e-3, "(0.03,)", True), else as strings."""
  out = {}
  for item in items:
    field, sep, text = item.partition("=")
    if not sep or not field:
      raise CSGError(f"{flag} {item!r}: give FIELD=VALUE, e.g. {flag} batch_size=16")
    try:
      out[field] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[field] = text
  return out


_FIELDS_LISTED = {"--set": "python launch/train.py --show_config lists them",
                  "--app": "app_config() in csg_jax/evaluation/applications.py lists them"}


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def _apply(config, values: dict, flag: str) -> None:
  """config.<field> = value for each of `values`; a field the config lacks, or a value of
  another type, is one CSGError line naming the flag."""
  for field, value in values.items():
    if not _has_field(config, field):
      raise CSGError(f"{flag} {field}={value!r}: there is no such field ({_FIELDS_LISTED[flag]})")
    try:
      config.update_from_flattened_dict({field: value})
    except (KeyError, AttributeError, TypeError, ValueError) as e:
      detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise CSGError(f"{flag} {field}={value!r} does not apply: {detail}") from None


def app_settings(values: dict):
  """applications.app_config() with the --app values, checked before anything runs."""
  from csg_jax.evaluation import applications, attacks, detection, localization
  app = applications.app_config()
  _apply(app, values, "--app")
  localization.validate_config(app.localization, 0)
  attacks.validate_config(app.attacks)
  detection.validate_config(app.detection)
  return app


def pair_configs(overrides: dict, extra: dict):
  """(CSG config, STD config): voc_part_resnet152 with `overrides` and the --set values `extra`,
  and its std_config with the same; both validated."""
  from csg_jax import config as config_lib
  from csg_jax.experiments import compare
  csg = config_lib.load_config_file(CSG_CONFIG)
  csg.update_from_flattened_dict(overrides)
  _apply(csg, extra, "--set")
  csg.method = "csg"
  std = compare.std_baseline(csg, {**overrides, **extra})
  config_lib.validate(csg)
  config_lib.validate(std)
  unread = config_lib.unread_fields(csg, sorted(extra))
  if unread:
    raise CSGError("; ".join(f"--set {field} is not read by the runs ({why})"
                             for field, why in unread))
  return csg, std


def import_imagenet(args, data_overrides: dict) -> dict:
  """<root>/imagenet: --weights imported as csg-import-torch imports them (reused when it holds
  this file already); returns its imported.json."""
  from csg_jax.cli import torch_workdir
  from csg_jax.config import load_config_file
  from csg_jax.runs import trained
  workdir = os.path.join(args.root, "imagenet")
  record = trained.read_import_record(workdir)
  if record is not None:
    if (record["weights"], record["model"]) != (args.weights, args.model):
      raise CSGError(f"{workdir} holds an import of {record['weights']} as {record['model']}, "
                     f"not of {args.weights} as {args.model}: use another --root, or delete "
                     f"{workdir}")
    log(f"[2/5] reusing {workdir} ({record['model']}, width {record['width']})")
    return record
  config = load_config_file(CSG_CONFIG)  # its data (the release), its 1000-class head
  config.update_from_flattened_dict({**data_overrides, "model.name": args.model,
                                     "data.num_classes": None, "init_from": "",
                                     "init_from_skip": ""})
  imported = torch_workdir.read(config, args.weights, workdir)
  torch_workdir.write(imported, workdir)
  log(f"[2/5] imported {args.weights} as {torch_workdir.summary(imported, workdir)}")
  return imported.record


def has_csg_epoch(config) -> bool:
  """Whether the alternate schedule of `config` trains a CSG epoch within its epochs."""
  a = config.csg.alternate
  return config.csg.schedule != "alternate" or any(
      e >= a.warmup_epochs and e % a.period >= a.min_phase
      for e in range(math.ceil(config.num_epochs)))


def train_pair(root: str, csg, std, described: str) -> dict:
  """STD and CSG trained (or reused) and compared in <root>; returns each run's report.json."""
  from csg_jax.experiments import compare
  if not has_csg_epoch(csg):
    log(f"warning: no CSG epoch in {csg.num_epochs:g} epochs (csg.alternate.warmup_epochs is "
        f"{csg.csg.alternate.warmup_epochs}): the CSG run's gate keeps its start; lower it with "
        "--set csg.alternate.warmup_epochs=1")
  configs = {"std": f"{STD_CONFIG}.py (the STD baseline {CSG_CONFIG}.py names), {described}",
             "csg": f"{CSG_CONFIG}.py, {described}"}
  log(f"[3/5] STD ({STD_CONFIG}) and CSG ({CSG_CONFIG}) in {root}")
  compare.train_and_compare(csg, root, std_config=std, configs=configs)
  reports = {}
  for method in ("std", "csg"):
    with open(os.path.join(root, method, "eval", "report.json")) as f:
      reports[method] = json.load(f)
  return reports


def _write_atomic(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def run_applications(root: str, app) -> dict:
  """Localization and adversarial detection of both runs, side by side in <root>/applications
  (reused when the settings and both runs' results are those of the last time)."""
  from csg_jax.evaluation import applications
  out = os.path.join(root, "applications")
  workdirs = {m: os.path.join(root, m) for m in ("std", "csg")}
  stamp = {"app": json.loads(json.dumps(app.to_dict())), "results": {}}
  for method, workdir in workdirs.items():
    with open(os.path.join(workdir, "results.json")) as f:
      stamp["results"][method] = json.load(f)
  stamp_path = os.path.join(out, "settings.json")
  side_by_side = os.path.join(out, "applications_std_vs_csg.json")
  if os.path.isfile(stamp_path) and os.path.isfile(side_by_side):
    with open(stamp_path) as f:
      reuse = json.load(f) == stamp
    if reuse:
      log(f"[4/5] reusing the applications in {out} (same settings and runs)")
      with open(side_by_side) as f:
        return json.load(f)
  log(f"[4/5] localization and adversarial detection of both runs into {out}")
  applications.run_applications(app, std_workdir=workdirs["std"], csg_workdir=workdirs["csg"],
                                out_dir=out)
  _write_atomic(stamp_path, json.dumps(stamp, indent=1) + "\n")  # last: the outputs are there
  with open(side_by_side) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------


def _fmt(value) -> str:
  return "–" if value is None or math.isnan(value) else f"{value:.4f}"


def _paper(key: str) -> str:
  value = PAPER.get(key)
  return NOT_KNOWN if value is None else _fmt(value)


LOCALIZATION_AP = {"gradmap": "AP (IoU ≥ 0.2)", "cam": "AP (IoU > 0.3)",
                   "activmap": "AP (filters' success rate)"}


def localization_rows(side_by_side: dict) -> dict:
  """{method: {"std": {"iou", "ap"}, "csg": {...}}} of the methods both runs have."""
  std, csg = side_by_side["STD"].get("localization"), side_by_side["CSG"].get("localization")
  if not std or not csg:
    return {}
  return {m: {"std": {k: std[m][k] for k in ("iou", "ap")},
              "csg": {k: csg[m][k] for k in ("iou", "ap")}}
          for m in LOCALIZATION_AP if m in std and m in csg}


def adversarial_rows(side_by_side: dict) -> list[dict]:
  """Per attack and ε: accuracy under attack and each detector's AUC, STD beside CSG."""
  rows = []
  csg_rows = {(r["attack"], r["epsilon"]): r for r in side_by_side["CSG"].get("adversarial", [])}
  for s in side_by_side["STD"].get("adversarial", []):
    c = csg_rows.get((s["attack"], s["epsilon"]))
    if c is None:
      continue
    detectors = sorted(set(s["detection"]) | set(c["detection"]))
    rows.append({"attack": s["attack"], "epsilon_255": s["epsilon_255"],
                 "accuracy": {"std": s["accuracy"], "csg": c["accuracy"]},
                 "auc": {d: {"std": s["detection"].get(d, {}).get("auc"),
                             "csg": c["detection"].get(d, {}).get("auc")} for d in detectors}})
  return rows


def _no_nan(value):
  """`value` with every NaN (an AUC without both kinds of samples) as None: strict JSON."""
  if isinstance(value, dict):
    return {k: _no_nan(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_no_nan(v) for v in value]
  return None if isinstance(value, float) and math.isnan(value) else value


def report_markdown(summary: dict) -> str:
  r, loc, adv = summary["results"], summary["localization"], summary["adversarial"]
  num = r["csg"]["num_examples"]
  lines = [f"# VOC Part: {summary['model']} STD vs CSG, the released procedure", "",
           f"Data: the authors' release at `{summary['data']}` (`voc_part_released`), test split "
           f"= their val.txt, {num} objects. Start: `{summary['weights']}`. Configs: "
           f"`{CSG_CONFIG}.py` (CSG), `{STD_CONFIG}.py` (STD); overrides: {summary['overrides']}.",
           "", "| training | accuracy | MIS | L1 density | step | paper accuracy | paper MIS | "
           "paper L1 density |", "|---|---|---|---|---|---|---|---|"]
  for method in ("std", "csg"):
    x = r[method]
    lines.append(f"| {method.upper()} | {_fmt(x['accuracy'])} | {_fmt(x['mis'])} | "
                 f"{_fmt(x['gate_density'])} | {x['step']} | {_paper(method + '.accuracy')} | "
                 f"{_paper(method + '.mis')} | "
                 f"{'–' if method == 'std' else _paper('csg.gate_density')} |")
  unknown = ("" if PAPER else f" The paper's VOC Part numbers are {NOT_KNOWN}: "
             "docs/csg-method.md gives Table 1's CIFAR-10 row only, so no paper cell here holds a "
             "number.")
  lines += ["", "Accuracy and MIS on the test split through the STD path (MIS in nats, ceiling "
            f"{r['csg']['mi_ceiling']:.4f}).{unknown}", ""]
  if loc:
    lines += ["## Localization (released object masks, test split)", "",
              "| method | metric | STD | CSG | paper |", "|---|---|---|---|---|"]
    for method, row in loc.items():
      lines.append(f"| {method} | mean IoU | {_fmt(row['std']['iou'])} | "
                   f"{_fmt(row['csg']['iou'])} | {NOT_KNOWN} |")
      lines.append(f"| {method} | {LOCALIZATION_AP[method]} | {_fmt(row['std']['ap'])} | "
                   f"{_fmt(row['csg']['ap'])} | {NOT_KNOWN} |")
    lines.append("")
  else:
    lines += ["Localization: not run (no object masks found, or switched off).", ""]
  if adv:
    lines += ["## Adversarial-sample detection (csg_jax's protocol; the paper released none)", "",
              "| attack | ε (/255) | STD accuracy | CSG accuracy | detector | STD AUC | CSG AUC |",
              "|---|---|---|---|---|---|---|"]
    for row in adv:
      for detector, auc in row["auc"].items():
        lines.append(f"| {row['attack']} | {row['epsilon_255']:.0f} | "
                     f"{_fmt(row['accuracy']['std'])} | {_fmt(row['accuracy']['csg'])} | "
                     f"{detector.replace('_', ' ')} | {_fmt(auc['std'])} | {_fmt(auc['csg'])} |")
    lines += ["", "–: no AUC (STD has no gate; or the held-out half lacks correctly classified "
              "images or attacks that flip them).", ""]
  lines += ["Files: `compare.md` (+ `compare.png`), `applications/applications_std_vs_csg.md` "
            "(+ `.json`, figures), each run's `eval/` (`report.json`, `applications.json`, "
            "figures); runs in `std/` and `csg/`, the imported weights in `imagenet/`.", ""]
  return "\n".join(lines)


def write_report(root: str, summary: dict) -> str:
  """<root>/reproduce_voc_part.md and .json (each written whole, then renamed)."""
  path = os.path.join(root, "reproduce_voc_part.md")
  _write_atomic(path, report_markdown(summary))
  _write_atomic(os.path.join(root, "reproduce_voc_part.json"), json.dumps(summary, indent=1) + "\n")
  return path


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--weights", required=True,
                      help="torchvision's ImageNet ResNet file (.pth/.pt, or .safetensors), e.g. "
                      "resnet152-394f9c45.pth")
  parser.add_argument("--data", required=True,
                      help="the authors' preprocessed_VOC_Part.zip, or its unzipped folder (the "
                      "one holding processed/)")
  parser.add_argument("--root", default="workdirs/reproduce_voc_part",
                      help="folder of everything written: imagenet/, std/, csg/, applications/, "
                      "compare.md, reproduce_voc_part.md and .json")
  parser.add_argument("--cache_dir", default="~/.cache/csg_jax",
                      help="where the zip is unzipped and the images decoded (data.cache_dir)")
  parser.add_argument("--model", default="resnet152",
                      help="the architecture of --weights (resnet18/34/50/101/152)")
  parser.add_argument("--epochs", type=float, default=0,
                      help="epochs of both runs (0: the configs' 151)")
  parser.add_argument("--image_size", type=int, default=0,
                      help="read processed/<S>x<S>/ of the release (0: its 128x128)")
  parser.add_argument("--seed", type=int, default=None, help="config.seed of both runs")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="a config override of both runs, e.g. --set batch_size=16 (csg.* "
                      "fields reach the CSG run only)")
  parser.add_argument("--app", action="append", default=[], metavar="FIELD=VALUE",
                      help="an application setting, e.g. --app attacks.pgd_steps=5 (fields: "
                      "app_config() in csg_jax/evaluation/applications.py)")
  args = parser.parse_args(argv)
  start = time.time()
  try:
    for flag, path in (("--weights", args.weights), ("--data", args.data)):
      if not os.path.exists(path):
        raise CSGError(f"{flag} {path} does not exist")
    extra = parse_assignments(args.set, "--set")
    app = app_settings(parse_assignments(args.app, "--app"))
    args.weights = os.path.abspath(args.weights)
    args.root = os.path.abspath(args.root)
    cache_dir = os.path.abspath(os.path.expanduser(args.cache_dir))
    data = prepare_data(os.path.abspath(args.data), cache_dir)
    data_overrides = {"data.source": "voc_part_released", "data.path": data,
                      "data.cache_dir": cache_dir}
    if args.image_size:
      data_overrides["data.image_size"] = args.image_size
    overrides = {**data_overrides, "model.name": args.model}
    if args.epochs:
      overrides["num_epochs"] = float(args.epochs)
    if args.seed is not None:
      overrides["seed"] = args.seed
    pair_configs(overrides, extra)  # a bad --set stops here, before the import and training
    seconds = {}
    record = import_imagenet(args, data_overrides)
    overrides.update({"model.width": record["width"],
                      "init_from": os.path.join(args.root, "imagenet")})
    csg, std = pair_configs(overrides, extra)
    shown = {k: v for k, v in {**overrides, **extra}.items()
             if k not in ("data.path", "data.cache_dir", "init_from", "data.source")}
    described = ", ".join(f"{k}={v!r}" for k, v in sorted(shown.items()))
    seconds["data_and_import"], mark = time.time() - start, time.time()
    reports = train_pair(args.root, csg, std, described)
    seconds["training_and_evaluation"], mark = time.time() - mark, time.time()
    side_by_side = run_applications(args.root, app)
  except CSGError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2

  seconds["applications"] = time.time() - mark
  keys = ("accuracy", "mis", "gate_density", "step", "num_examples", "mi_ceiling")
  summary = {"model": args.model, "data": data, "weights": args.weights, "root": args.root,
             "overrides": described,
             "results": {m: {k: reports[m][k] for k in keys} for m in ("std", "csg")},
             "paper": PAPER or NOT_KNOWN,
             "localization": localization_rows(side_by_side),
             "adversarial": adversarial_rows(side_by_side),
             "seconds": {k: round(v, 1) for k, v in seconds.items()},
             "wall_s": round(time.time() - start, 1)}
  summary = _no_nan(summary)
  path = write_report(args.root, summary)
  log(f"[5/5] report in {path} (+ .json)")
  log("")
  log(report_markdown(summary))
  print(json.dumps(summary), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
