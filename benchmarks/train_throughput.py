r"""Training throughput of csg_jax (STD and CSG steps) against a PyTorch re-statement.

For each model: csg_jax's jit-compiled train step (`training.make_train_steps`) for STD and
CSG (the joint loss), and the PyTorch re-statement of the released step
(benchmarks/torch_reference.py: the gate applied by a per-sample Python loop), same architecture,
batch and input size, in this one process. Steps are timed after compilation/warm-up, one step per
variant per round with the variant order rotating every round, so that load from other processes
hits every variant alike; images/s are batch / median step time. The two ratios are medians of
per-round ratios (steps a few seconds apart, under about the same load from other processes):
"csg_over_std_time" is csg_jax CSG step time / STD step time, "jax_over_torch_speed" is csg_jax CSG
images/s / PyTorch CSG images/s. On a CPU shared with other work, wall time mostly measures the
others' load, so the same ratios are also given from this process's CPU time per step
("csg_over_std_cpu_time", "jax_over_torch_cpu_speed"; CPU backend only), and "csg_over_std_flops"
from XLA's cost analysis of the two compiled steps, which no load disturbs. The last line printed
is a JSON object keyed by model.

Load: the rounds are repeated (--repeats, default 3). During each repeat the CPU time other
processes used is measured (/proc/stat's busy time minus this process's); a repeat in which they
used more than --max-others-load cores (default 0.25) is flagged and left out of the summary,
which reports the median ratio over the quiet repeats and its range across them. The load
average before and after each repeat is printed beside it.

  python benchmarks/train_throughput.py                        # resnet20 and resnet50, CPU
  python benchmarks/train_throughput.py --models resnet20 --rounds 20
  python benchmarks/train_throughput.py --skip-torch           # csg_jax only

Models: resnet20 at 32x32, batch 128, 10 classes (CIFAR-10); resnet50 at 128x128, batch 32,
6 classes (the released VOC Part setting). torch is optional (pip install -e ".[bench]").
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runs from a checkout without `pip install -e .` too
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from csg_jax.log import log  # pylint: disable=g-import-not-at-top,wrong-import-position

# name -> (image side, batch size, classes, default rounds).
MODELS = {
    "resnet20": (32, 128, 10, 12),
    "resnet50": (128, 32, 6, 4),
}


def jax_variants(name: str, size: int, batch: int, classes: int, seed: int,
                 dtype: str = "float32"):
  """{"jax_std": step(), "jax_csg": step()}, the parameter count, XLA's cost analyses; the trunk
  computes in `dtype` (model.dtype).

  The steps are those `training.make_train_steps` returns, compiled ahead for these shapes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from csg_jax import runs, sharding  # pylint: disable=g-import-not-at-top
  from csg_jax.config import load_config_file  # pylint: disable=g-import-not-at-top
  from csg_jax.training import make_train_steps  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh()
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, classes, size=batch).astype(np.int32)
  data = sharding.to_global({"image": images, "label": labels}, mesh)
  steps, num_params, costs = {}, None, {}
  for method in ("std", "csg"):
    config = load_config_file("cifar10_resnet20")  # SGD + momentum, weight decay, joint CSG
    config.method = method
    config.model.name = name
    config.model.dtype = dtype
    config.seed = seed
    setup = runs.for_shapes(config, num_classes=classes, image_shape=(size, size, 3),
                            num_train_examples=50_000)
    state = jax.jit(lambda r, s=setup: runs.create_train_state(
        s.model, s.optimizers, s.image_shape, r), out_shardings=sharding.replicated(mesh))(
            setup.rng)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    train_fns = make_train_steps(setup)
    t0 = time.perf_counter()
    fn = train_fns["std" if method == "std" else "joint"].lower(state, data).compile()
    cost = fn.cost_analysis()
    costs[method] = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    holder = {"state": state}

    def step(fn=fn, holder=holder):
      holder["state"], metrics = fn(holder["state"], data)  # the state is donated
      jax.block_until_ready((holder["state"], metrics))

    step()
    log(f"  csg_jax {method}: compiled + first step in {time.perf_counter() - t0:.1f} s")
    steps[f"jax_{method}"] = step
  return steps, num_params, costs


def torch_variants(name: str, size: int, batch: int, classes: int, seed: int, threads: int):
  """{"torch_std": step(), "torch_csg": step()} and the trunk+head parameter count, or None."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    log("  torch is not installed: skipping the PyTorch comparison "
        "(pip install -e \".[bench]\" to add it)")
    return None, None
  import torch_reference as ref  # pylint: disable=g-import-not-at-top

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  images = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32)).to(device)
  labels = torch.from_numpy(rng.integers(0, classes, size=batch)).to(device)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  steps, num_params = {}, None
  for method in ("std", "csg"):
    model = ref.CSGNet(ref.build_trunk(name), classes).to(device).train()
    num_params = ref.num_params(model)
    trunk_opt, gate_opt = ref.make_optimizers(model)

    if method == "std":
      def step(model=model, trunk_opt=trunk_opt):
        ref.std_step(model, trunk_opt, images, labels)
        sync()
    else:
      def step(model=model, trunk_opt=trunk_opt, gate_opt=gate_opt):
        ref.csg_step(model, trunk_opt, gate_opt, images, labels)
        sync()

    t0 = time.perf_counter()
    step()
    step()  # oneDNN / cuDNN pick and cache their kernels in the first steps
    log(f"  torch {method}: two warm-up steps in {time.perf_counter() - t0:.1f} s")
    steps[f"torch_{method}"] = step
  log(f"  torch {torch.__version__} on {device}"
      + (f" with {torch.get_num_threads()} threads" if device.type == "cpu" else ""))
  return steps, num_params


def busy_cpu_seconds() -> float:
  """CPU seconds the whole machine has spent busy (all processes), from /proc/stat."""
  with open("/proc/stat") as f:
    fields = [int(v) for v in f.readline().split()[1:]]
  user, nice, system, _, _, irq, softirq, steal = fields[:8]
  return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
  """CPU used by other processes while a block ran, in cores: the machine's busy CPU time minus
  this process's, over the block's wall time. The load average cannot tell this: it counts this
  benchmark's own threads."""

  def __enter__(self):
    self.load_before = os.getloadavg()[0]
    self._t, self._busy, self._own = time.perf_counter(), busy_cpu_seconds(), time.process_time()
    return self

  def __exit__(self, *exc):
    wall = time.perf_counter() - self._t
    others = (busy_cpu_seconds() - self._busy) - (time.process_time() - self._own)
    self.load_after = os.getloadavg()[0]
    self.cores = max(others, 0.0) / max(wall, 1e-9)


def device_name() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return f"{d.platform}:{getattr(d, 'device_kind', '') or d.platform}"


def bench_model(name: str, args) -> dict:
  size, batch, classes, default_rounds = MODELS[name]
  rounds = args.rounds or default_rounds
  log(f"== {name}: {size}x{size} images, batch {batch}, {classes} classes, {rounds} rounds")
  steps, jax_params, costs = jax_variants(name, size, batch, classes, args.seed)
  torch_steps, torch_params = (None, None) if args.skip_torch else torch_variants(
      name, size, batch, classes, args.seed, args.torch_threads)
  log(f"  parameters (without G): csg_jax {jax_params:,}"
      + (f", torch {torch_params:,}" if torch_params is not None else ""))
  if torch_params is not None and torch_params != jax_params:
    log("  WARNING: parameter counts differ; the two networks are not the same architecture")
  steps.update(torch_steps or {})

  names = list(steps)
  wall = {n: [] for n in names}
  cpu = {n: [] for n in names}  # this process's CPU time (all threads): what a step costs
  blocks = []  # one per repeat: its rounds, the others' load and its own ratios
  for repeat in range(args.repeats):
    first = len(wall[names[0]])
    with OthersLoad() as load:
      for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always first
        for n in order:
          t0, c0 = time.perf_counter(), time.process_time()
          steps[n]()
          wall[n].append(time.perf_counter() - t0)
          cpu[n].append(time.process_time() - c0)
        log(f"  repeat {repeat + 1}/{args.repeats} round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {wall[n][-1] * 1e3:.0f} ms ({cpu[n][-1]:.2f} cpu-s)" for n in names))
    quiet = load.cores <= args.max_others_load
    blocks.append({"first": first, "others_cores": round(load.cores, 3), "quiet": quiet,
                   "loadavg_before": round(load.load_before, 2),
                   "loadavg_after": round(load.load_after, 2)})
    log(f"  repeat {repeat + 1}: other processes used {load.cores:.2f} cores (load average "
        f"{load.load_before:.2f} before, {load.load_after:.2f} after)"
        + ("" if quiet else f": LOADED (> {args.max_others_load}), left out of the summary"))

  def ratio(times, a, b):
    # Median of per-round ratios: the two steps of a round ran seconds apart, under about the
    # same load from other processes, which a ratio of overall medians would not exploit.
    if a not in times or b not in times:
      return None
    return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 4)

  def block_times(times, block):
    return {n: t[block["first"]:block["first"] + rounds] for n, t in times.items()}

  # The summary uses the quiet repeats only (all of them with --allow-load, flagged).
  kept = [b for b in blocks if b["quiet"]] or (blocks if args.allow_load else [])
  if not kept:
    log(f"  every repeat ran under load: no figures for {name} (rerun on a quiet machine, or "
        "pass --allow-load to report them flagged)")
    return {"blocks": blocks, "quiet_repeats": 0}
  on_cpu = device_name().startswith("cpu")  # on a GPU, CPU time says little of a step's cost
  for b in blocks:
    b["jax_over_torch_speed"] = ratio(block_times(wall, b), "torch_csg", "jax_csg")
    b["csg_over_std_time"] = ratio(block_times(wall, b), "jax_csg", "jax_std")
  wall = {n: [x for b in kept for x in block_times(wall, b)[n]] for n in names}
  cpu = {n: [x for b in kept for x in block_times(cpu, b)[n]] for n in names}
  median = {n: statistics.median(t) for n, t in wall.items()}
  out = {n: round(batch / median[n], 2) for n in names}
  out["csg_over_std_time"] = ratio(wall, "jax_csg", "jax_std")
  out["jax_over_torch_speed"] = ratio(wall, "torch_csg", "jax_csg")
  spread = [b["jax_over_torch_speed"] for b in kept if b["jax_over_torch_speed"] is not None]
  out["jax_over_torch_speed_range"] = [min(spread), max(spread)] if spread else None
  out["csg_over_std_cpu_time"] = ratio(cpu, "jax_csg", "jax_std") if on_cpu else None
  out["jax_over_torch_cpu_speed"] = ratio(cpu, "torch_csg", "jax_csg") if on_cpu else None
  out["quiet_repeats"] = sum(b["quiet"] for b in blocks)
  out["blocks"] = blocks
  flops = {m: costs[m].get("flops") for m in costs}
  out["csg_over_std_flops"] = (round(flops["csg"] / flops["std"], 6)
                               if flops.get("std") and flops.get("csg") else None)
  out.update(batch=batch, image_size=size, rounds=rounds, params=jax_params,
             device=device_name())
  for n in names:
    log(f"  {n:10s} {out[n]:9.1f} images/s  (median step {median[n] * 1e3:.1f} ms, "
        f"min {min(wall[n]) * 1e3:.1f}, max {max(wall[n]) * 1e3:.1f}; median "
        f"{statistics.median(cpu[n]):.2f} cpu-s)")
  log(f"  csg_jax CSG / STD step time: {out['csg_over_std_time']:.3f} (CPU time "
      f"{out['csg_over_std_cpu_time']}, XLA FLOPs {out['csg_over_std_flops']})")
  if out["jax_over_torch_speed"] is not None:
    low, high = out["jax_over_torch_speed_range"]
    log(f"  csg_jax CSG / torch CSG speed: {out['jax_over_torch_speed']:.2f}x (repeats "
        f"{low:.2f}-{high:.2f}; CPU time {out['jax_over_torch_cpu_speed']}) over "
        f"{len(kept)} of {len(blocks)} repeats"
        + ("" if all(b["quiet"] for b in kept) else ", SOME UNDER LOAD"))
  return out


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="resnet20,resnet50",
                      help=f"comma-separated, from {sorted(MODELS)}")
  parser.add_argument("--rounds", type=int, default=0,
                      help="timed steps per variant (0: per-model default)")
  parser.add_argument("--torch-threads", type=int, default=len(os.sched_getaffinity(0)),
                      help="torch CPU threads (default: the CPUs this process may use, as XLA)")
  parser.add_argument("--skip-torch", action="store_true", help="time csg_jax only")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=3,
                      help="the whole set of rounds, repeated: the ratios' spread across them")
  parser.add_argument("--max-others-load", type=float, default=0.25,
                      help="a repeat during which other processes used more CPU cores than this "
                           "is flagged and left out of the summary")
  parser.add_argument("--allow-load", action="store_true",
                      help="summarise loaded repeats too (flagged) when no repeat was quiet")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.models.split(",") if n.strip()]
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")

  import jax  # pylint: disable=g-import-not-at-top  (after argparse: --help stays fast)
  log(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()} "
      f"cpus={len(os.sched_getaffinity(0))} load average {os.getloadavg()[0]:.2f}")
  results = {name: bench_model(name, args) for name in names}
  results_line = json.dumps(results)
  print(results_line, flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
