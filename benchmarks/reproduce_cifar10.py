r"""ResNet-20 STD and CSG on CIFAR-10, as the paper's Table 1 row beside the paper's numbers.

Trains both runs with launch/train.py (--config: configs/cifar10_resnet20.py, csg_jax's recipe, by
default; cifar10_resnet20_clip or cifar10_resnet20_released; plus the schedule's overrides below),
one workdir each under --workdir; a run whose results.json exists is reused, and an interrupted run
resumes from its checkpoints, so a rerun is cheap. Accuracy and MIS are measured on the test
split through the STD path, as in the paper. The last line printed is a JSON object.

  python benchmarks/reproduce_cifar10.py                           # reduced: 2 CPU cores, 35-60 min
  python benchmarks/reproduce_cifar10.py --schedule full --jobs 2  # one GPU, both runs at once
  python benchmarks/reproduce_cifar10.py --source tfds             # CIFAR-10 through TFDS
  python benchmarks/reproduce_cifar10.py --config cifar10_resnet20_released --seed 1
  python benchmarks/reproduce_cifar10.py --seeds 0,1,2  # mean ± sd, paired CSG - STD with 95 % CI

Data: the JPEG copy of CIFAR-10 at ../shared/data/cifar10-jpeg.tar.gz (relative to the repository
root; --data to point elsewhere), or TFDS with --source tfds.
"""

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runs from a checkout without `pip install -e .` too

from csg_jax.log import log  # pylint: disable=g-import-not-at-top,wrong-import-position

# Paper Table 1 (CIFAR-10, ResNet-20): accuracy, MIS, L1 density.
PAPER = {"csg": (0.9192, 0.1603, 0.0788), "std": (0.9169, 0.1119, None)}

# Overrides per schedule; both keep the config's optimiser, batch and CSG settings and differ in
# length only.
SCHEDULES = {
    # 3 epochs: 1 172 steps of batch 128 a run; on 2 CPU cores 0.85-1.5 s a step (jax 0.8.3 to
    # 0.10.2: RESULTS.md), so 35-60 min for both runs.
    "reduced": {"num_epochs": 3.0, "log_every_steps": 50, "checkpoint_every_steps": 400,
                "eval_every_steps": 0},
    # 60 epochs: sized so that both runs (at once, --jobs 2) fit in the 10 minutes of gpu.sh
    # beside the other benchmarks it runs. The paper trains longer: --epochs 200.
    "full": {"num_epochs": 60.0, "log_every_steps": 391, "checkpoint_every_steps": 3910,
             "eval_every_steps": 0},
}

# The configs this benchmark runs (configs/<name>.py) and what each one's reduced schedule changes
# beyond its length.
CONFIGS = {
    "cifar10_resnet20": {},  # csg_jax's recipe: joint loss, max_normalize, d = 0.1
    "cifar10_resnet20_clip": {},  # the same with G clipped to [0, 1] and d = 0.079
    # The released defaults: 10 warm-up STD epochs of 200 become 1 of 3, so that epochs 1 and 2
    # are CSG epochs (e % 3 >= 1) and the 3-epoch run alternates at all.
    "cifar10_resnet20_released": {"reduced": {"csg.alternate.warmup_epochs": 1}},
}


def load_config(name: str):
  """configs/<name>.py's get_config()."""
  from csg_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  return load_config_file(name)  # a shipped config


def run_overrides(method: str, args) -> dict:
  overrides = dict(SCHEDULES[args.schedule])
  if args.epochs:
    overrides["num_epochs"] = float(args.epochs)
  overrides.update(method=method, seed=args.seed)
  if method == "csg":
    overrides.update(CONFIGS[args.config].get(args.schedule, {}))
  if args.source == "folder":
    overrides.update({"data.source": "folder", "data.path": args.data})
  for item in args.set:
    key, _, value = item.partition("=")
    if method == "csg" or not key.startswith("csg."):
      overrides[key] = value
  return overrides


def workdir_of(method: str, overrides: dict, args) -> str:
  # The name carries a digest of the overrides, so a changed setting never reuses a stale run.
  # Values enter as the command line spells them: --set lr=0.3 and a schedule's 0.3 are one run.
  spelled = {k: str(v) for k, v in overrides.items()}
  spelled["config"] = args.config
  digest = hashlib.sha1(json.dumps(spelled, sort_keys=True).encode()).hexdigest()[:8]
  epochs = f"{float(overrides['num_epochs']):g}"
  return os.path.join(args.workdir, f"{method}_e{epochs}_s{args.seed}_{digest}")


def command(config_name: str, overrides: dict, workdir: str) -> list:
  cmd = [sys.executable, os.path.join(REPO, "launch", "train.py"),
         "--config", os.path.join(REPO, "configs", f"{config_name}.py"), "--workdir", workdir]
  return cmd + [f"--config.{k}={v}" for k, v in overrides.items()]


def _pump(proc, prefix: str, log_file) -> None:
  for line in proc.stdout:
    line = line.rstrip("\n")
    print(f"[{prefix}] {line}", flush=True)
    log_file.write(line + "\n")


def train_runs(todo, args, deadline) -> dict:
  """Runs the launch/train.py commands in `todo`, --jobs at a time; returns {method: exit code}."""
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if args.jobs > 1:
    # Several JAX processes on one GPU: each takes a share of its memory, not the default 75 %.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.jobs:.2f}")
  pending, running, codes, stopping = list(todo), {}, {}, set()
  while pending or running:
    if pending and deadline and time.time() > deadline:
      log(f"deadline reached: not starting {', '.join(m for m, _, _ in pending)}")
      pending = []
    while pending and len(running) < args.jobs:
      method, cmd, workdir = pending.pop(0)
      os.makedirs(workdir, exist_ok=True)
      log_file = open(os.path.join(workdir, "train.log"), "a", buffering=1)
      log(f"[{method}] $ {' '.join(cmd)}")
      proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=REPO)
      pump = threading.Thread(target=_pump, args=(proc, method, log_file), daemon=True)
      pump.start()
      running[method] = (proc, pump, log_file, time.time())
    time.sleep(1.0)
    for method, (proc, pump, log_file, start) in list(running.items()):
      if deadline and time.time() > deadline and proc.poll() is None and method not in stopping:
        # launch/train.py checkpoints and exits on SIGTERM; the checkpoint is evaluated below.
        log(f"[{method}] deadline reached: stopping the run (SIGTERM)")
        proc.send_signal(signal.SIGTERM)
        stopping.add(method)
      if proc.poll() is not None:
        pump.join()
        log_file.close()
        codes[method] = proc.returncode
        log(f"[{method}] exited with status {proc.returncode} after "
            f"{(time.time() - start) / 60:.1f} min")
        del running[method]
  return codes


def evaluate_checkpoint(workdir: str) -> dict:
  """Test-split accuracy, MIS and density of the newest checkpoint of an unfinished run."""
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  from csg_jax import methods  # pylint: disable=g-import-not-at-top
  from csg_jax.evaluation import predict  # pylint: disable=g-import-not-at-top

  run = runs.load_run(workdir)
  eval_fn = predict.make_eval_fn(run.model, run.mesh)
  result = predict.evaluate(eval_fn, run.state, run.dataset, run.config, run.mesh)
  summary = predict.summarize_eval(result, run.dataset.num_classes,
                                   methods.for_config(run.config).density(run.state.gates),
                                 predict.mis_seed(run.config))
  return {"method": run.config.method, "step": int(run.step), "accuracy": summary["accuracy"],
          "mis": summary["mis"], "gate_density": summary["gate_density"]}


def table(results: dict, total_steps: dict) -> str:
  def fmt(v):
    return "–" if v is None else f"{v:.4f}"

  lines = ["| training | accuracy | MIS | L1 density | paper accuracy | paper MIS | "
           "paper L1 density | steps |", "|---|---|---|---|---|---|---|---|"]
  for method in ("csg", "std"):
    r = results.get(method)
    ours = (None, None, None) if r is None else (r["accuracy"], r["mis"], r["gate_density"])
    steps = "not run" if r is None else f"{r['step']}/{total_steps[method]}"
    lines.append(f"| {method.upper()} | {fmt(ours[0])} | {fmt(ours[1])} | {fmt(ours[2])} | "
                 + " | ".join(fmt(v) for v in PAPER[method]) + f" | {steps} |")
  return "\n".join(lines)


def checks(results: dict, schedule: str) -> list:
  csg, std = results.get("csg"), results.get("std")
  out = []
  if csg and std:
    gap = 100 * (csg["accuracy"] - std["accuracy"])
    out.append(("CSG accuracy within 1 point of STD", abs(gap) <= 1.0,
                f"CSG - STD = {gap:+.2f} points"
                + (" (CSG ahead: the gate costs no accuracy)" if gap > 1.0 else "")))
    out.append(("CSG MIS above STD MIS", csg["mis"] > std["mis"],
                f"CSG - STD = {csg['mis'] - std['mis']:+.4f}"))
  if csg and schedule == "full":
    out.append(("CSG accuracy >= 0.917 (paper 0.9192)", csg["accuracy"] >= 0.917,
                f"{csg['accuracy']:.4f}"))
    out.append(("CSG MIS >= 0.160 (paper 0.1603)", csg["mis"] >= 0.160, f"{csg['mis']:.4f}"))
  return out


def run_seed(args, methods, start) -> dict:
  """Trains (or reuses) the runs of seed `args.seed`, prints its table beside the paper's; returns
  what the seed's JSON line holds."""
  from csg_jax import methods  # pylint: disable=g-import-not-at-top
  todo, results, workdirs, total_steps = [], {}, {}, {}
  for method in methods:
    overrides = run_overrides(method, args)
    workdir = workdirs[method] = workdir_of(method, overrides, args)
    config = load_config(args.config)
    config.update(method=method, num_epochs=float(overrides["num_epochs"]),
                  batch_size=int(overrides.get("batch_size", config.batch_size)))
    total_steps[method] = methods.make_plan(config, 50_000).total_steps
    done = os.path.join(workdir, "results.json")
    if os.path.exists(done):
      with open(done) as f:
        results[method] = json.load(f)
      log(f"[{method}] reusing {done}")
    else:
      todo.append((method, command(args.config, overrides, workdir), workdir))

  seed_start = time.time()
  deadline = start + args.deadline_s if args.deadline_s else None
  codes = train_runs(todo, args, deadline)
  partial = []
  for method, code in codes.items():
    done = os.path.join(workdirs[method], "results.json")
    if os.path.exists(done):
      with open(done) as f:
        results[method] = json.load(f)
    elif os.path.isdir(os.path.join(workdirs[method], "checkpoints")):
      log(f"[{method}] unfinished (status {code}): evaluating its newest checkpoint")
      try:
        results[method] = evaluate_checkpoint(workdirs[method])
        partial.append(method)
      except Exception as e:  # pylint: disable=broad-except  (report, keep the other run)
        log(f"[{method}] could not evaluate the checkpoint: {e}")
    else:
      log(f"[{method}] failed with status {code} before its first checkpoint; see "
          f"{os.path.join(workdirs[method], 'train.log')}")

  wall = time.time() - seed_start
  epochs = args.epochs or SCHEDULES[args.schedule]["num_epochs"]
  log("")
  log(f"CIFAR-10, ResNet-20 (K = 64), configs/{args.config}.py: {args.schedule} schedule, "
      f"{epochs:g} epochs of batch {config.batch_size}, "
      f"seed {args.seed}, data {args.data_name}; test split, STD path; wall time "
      f"{wall / 60:.1f} min")
  log(table(results, total_steps))
  if partial:
    log(f"PARTIAL: {', '.join(partial)} stopped at the deadline before its schedule ended; "
        "the row shows its newest checkpoint")
  for name, ok, detail in checks(results, args.schedule):
    log(f"{'PASS' if ok else 'MISS'}: {name}: {detail}")
  return {"config": args.config, "schedule": args.schedule, "epochs": epochs, "seed": args.seed,
          "data": args.data_name, "wall_s": round(wall, 1), "partial": partial,
          "results": results, "workdirs": workdirs}


def seed_table(per_seed, num_examples: int) -> dict:
  """Mean ± sd over seeds and the paired CSG − STD difference with its 95 % interval (the
  summary csg-compare --seeds writes), from the seeds whose two runs both finished."""
  from csg_jax.experiments import statistics  # pylint: disable=g-import-not-at-top
  reports = {}
  for row in per_seed:
    if row["partial"] or not all(m in row["results"] for m in ("std", "csg")):
      log(f"seed {row['seed']} left out of the summary: a run did not finish")
      continue
    reports[row["seed"]] = {m: {**row["results"][m], "workdir": row["workdirs"][m],
                                "num_examples": num_examples} for m in ("std", "csg")}
  if len(reports) < 2:
    log("fewer than 2 seeds with both runs finished: no mean ± sd or interval")
    return {}
  summary = statistics.seed_summary(reports)
  log("")
  log(statistics.seed_markdown(summary, footer="Per-seed rows: the tables above."))
  return summary


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="reduced",
                      help="reduced: 3 epochs, for 2 CPU cores; full: 60 epochs, for a GPU")
  parser.add_argument("--epochs", type=float, default=0, help="override the schedule's epochs")
  parser.add_argument("--source", choices=("folder", "tfds"), default="folder",
                      help="folder: the JPEG copy (--data); tfds: TensorFlow Datasets 'cifar10'")
  parser.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz",
                      help="the CIFAR-10 JPEG tarball; a relative path is taken from the "
                      "repository root")
  parser.add_argument("--workdir", default="workdirs/reproduce_cifar10",
                      help="root of the runs' workdirs (relative: from the repository root)")
  parser.add_argument("--config", choices=sorted(CONFIGS), default="cifar10_resnet20",
                      help="configs/<name>.py: the recipe, its clip variant or the released "
                      "defaults")
  parser.add_argument("--methods", default="std,csg", help="which runs: std, csg or both")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs trained at once (2 on a GPU: small steps leave it idle)")
  parser.add_argument("--seeds", "--seed", default="0", metavar="SEEDS",
                      help="seed, or comma-separated seeds trained in turn (e.g. 0,1,2); with "
                      "two or more: mean ± sd and the paired CSG − STD difference with its 95 %% "
                      "interval")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="extra config override, e.g. --set csg.gate.sparsity_weight=0.05 "
                      "(csg.* fields reach the CSG run only)")
  parser.add_argument("--deadline-s", type=float, default=0,
                      help="stop training after this many seconds and evaluate the newest "
                      "checkpoints instead (0: no limit); reported as partial")
  args = parser.parse_args(argv)
  start = time.time()
  args.workdir = os.path.join(REPO, args.workdir)
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  if not methods or any(m not in PAPER for m in methods):
    parser.error(f"--methods {args.methods!r}: use std, csg or std,csg")
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    parser.error(f"--seeds {args.seeds!r}: give integers separated by commas, e.g. 0,1,2")
  if not seeds or len(set(seeds)) != len(seeds):
    parser.error(f"--seeds {args.seeds!r}: give distinct integers, e.g. 0,1,2")

  num_examples = 10_000  # CIFAR-10's test split, from either source
  args.data_name = "cifar10 (TFDS)"
  if args.source == "folder":
    args.data = os.path.normpath(os.path.join(REPO, args.data))
    args.data_name = os.path.basename(args.data)
    if not os.path.exists(args.data):
      print(f"error: CIFAR-10 is not at {args.data}: the JPEG copy lives in ../shared/data "
            "beside a development checkout. Pass --data PATH to the tarball, or --source tfds "
            "to read CIFAR-10 through TensorFlow Datasets.", file=sys.stderr)
      return 2
    # Decode (or find) the cached copy once here, so concurrent runs never race to build it.
    from csg_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    cfg = data_lib.default_config("folder")
    cfg.path = args.data
    dataset = data_lib.load_dataset(cfg)
    num_examples = len(dataset.splits["test"])
    log(f"data: {args.data}: {len(dataset.splits['train'])} train / "
        f"{num_examples} test images, cache "
        f"{'built' if dataset.cache.built else 'reused'} in {dataset.cache.seconds:.1f} s")

  per_seed = []
  for seed in seeds:
    args.seed = seed
    per_seed.append(run_seed(args, methods, start))
  complete = all(m in row["results"] for row in per_seed for m in methods)
  if len(seeds) == 1:
    print(json.dumps(per_seed[0]), flush=True)
    return 0 if complete else 1
  summary = seed_table(per_seed, num_examples) if set(methods) == {"std", "csg"} else {}
  print(json.dumps({"config": args.config, "schedule": args.schedule, "seeds": seeds,
                    "wall_s": round(time.time() - start, 1), "per_seed": per_seed,
                    "summary": summary}), flush=True)
  return 0 if complete else 1


if __name__ == "__main__":
  sys.exit(main())
