r"""Where a ResNet-20 CSG training step spends its time on CPU, per op class: csg_jax's compiled
step (jax.profiler's trace, one event per XLA thunk, each classified by the HLO instruction it
runs) beside PyTorch's profiler on the PyTorch re-statement's step (benchmarks/torch_reference.py),
same batch and shapes, in one process.

  python benchmarks/profile_step.py                     # ResNet-20, batch 128, 5 profiled steps
  python benchmarks/profile_step.py --xla-flags="--xla_cpu_use_onednn=true" --skip-torch

XLA thunks are classed by the instruction's shape and the op names in its HLO metadata:
convolutions forward, input gradients, weight gradients (kernel-shaped outputs), layout
transposes and copies, batch norm / ReLU / residual adds (forward, backward), the optimiser
update (ops outside the differentiated function), the rest; shares are of the thunks' summed
time, which exceeds the step's wall time where independent thunks run at once on the two cores
("concurrency" = summed / wall). The class names follow jaxlib 0.10's thunk names (ynn_fusion,
transpose_copy_fusion): under other versions more time lands in "other". PyTorch ops are classed
by name (self CPU time). Both tables are ms per step; the load average is printed beside them
(rerun above ~0.5). The last line printed is a JSON object.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODEL, SIZE, BATCH, CLASSES = "resnet20", 32, 128, 10

JAX_CLASSES = ("conv forward", "conv input gradients", "conv weight gradients",
               "layout transposes and copies", "batch norm, ReLU, adds (forward)",
               "batch norm, ReLU, adds (backward)", "optimiser update", "other (loss, head, gate)")
TORCH_CLASSES = {
    "conv forward": r"^aten::(mkldnn_convolution|_convolution|convolution|conv2d)$",
    "conv backward (input and weight)": r"^aten::(convolution_backward|mkldnn_convolution_backward)",
    "batch norm (forward)": r"^aten::(native_batch_norm|_batch_norm_impl_index|batch_norm)$",
    "batch norm (backward)": r"^aten::native_batch_norm_backward",
    "ReLU, adds": r"^aten::(relu|relu_|clamp_min|threshold_backward|add|add_)$",
    "optimiser update": r"^(aten::_foreach_|Optimizer\.)",
}


def hlo_instructions(hlo_text: str) -> dict:
  """{instruction name: (shape, opcode, op names in its metadata and fused computation)}."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if head and not line.startswith(" "):
      current = computations.setdefault(head.group(1), [])
      continue
    if current is not None:
      current.append(line)
  out = {}
  for lines in computations.values():
    for line in lines:
      m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
      if not m:
        continue
      names = set(re.findall(r'op_name="([^"]+)"', line))
      calls = re.search(r"calls=%([\w.\-]+)", line)
      for inner in computations.get(calls.group(1), []) if calls else ():
        names |= set(re.findall(r'op_name="([^"]+)"', inner))
      out.setdefault(m.group(1), (m.group(2), m.group(3), names))
  return out


def jax_class(name: str, shape: str, opcode: str, op_names: set, batch: int) -> str:
  dims = [int(d) for d in re.findall(r"\d+", shape.split("{")[0].split("[", 1)[-1])]
  is_conv = opcode == "convolution" or name.startswith(("ynn_fusion", "conv")) or any(
      "conv_general_dilated" in n for n in op_names)
  backward = any("transpose(" in n for n in op_names)
  if name.startswith(("transpose", "copy")) or "transpose_copy" in name or opcode in (
      "transpose", "copy"):
    return "layout transposes and copies"
  if is_conv and len(dims) == 4 and dims[1:3] in ([3, 3], [1, 1]) and dims[0] != batch:
    return "conv weight gradients"
  if is_conv and len(dims) == 4:
    return "conv input gradients" if backward else "conv forward"
  if op_names and not any("jvp(" in n or "transpose(" in n for n in op_names):
    return "optimiser update"
  if any(re.search(r"/(stem_bn|bn\d|relu|.*block\d+/add)", n) for n in op_names):
    return ("batch norm, ReLU, adds (backward)" if backward
            else "batch norm, ReLU, adds (forward)")
  return "other (loss, head, gate)"


def profile_jax(steps: int, seed: int, dtype: str = "float32"):
  import jax  # pylint: disable=g-import-not-at-top
  import train_throughput  # pylint: disable=g-import-not-at-top

  variants, _, _ = train_throughput.jax_variants(MODEL, SIZE, BATCH, CLASSES, seed,
                                                    dtype)
  step = variants["jax_csg"]
  compiled = step.__defaults__[0]  # the AOT-compiled train step the closure runs
  instructions = hlo_instructions(compiled.as_text())
  for _ in range(2):
    step()
  walls = []
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(steps):
        t0 = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
    (trace,) = glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)["traceEvents"]
  per_class, per_thunk = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"] not in instructions:
      continue
    ms = e.get("dur", 0) / 1e3 / steps
    shape, opcode, op_names = instructions[e["name"]]
    per_class[jax_class(e["name"], shape, opcode, op_names, BATCH)] += ms
    per_thunk[e["name"]] += ms
  wall_ms = statistics.median(walls) * 1e3
  return per_class, per_thunk, wall_ms, instructions


def profile_torch(steps: int, seed: int, threads: int):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  import train_throughput  # pylint: disable=g-import-not-at-top
  variants, _ = train_throughput.torch_variants(MODEL, SIZE, BATCH, CLASSES, seed, threads)
  step = variants["torch_csg"]
  walls = []
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      t0 = time.perf_counter()
      step()
      walls.append(time.perf_counter() - t0)
  per_class, total = collections.Counter(), 0.0
  for avg in prof.key_averages():
    ms = avg.self_cpu_time_total / 1e3 / steps
    if avg.key.startswith("ProfilerStep") or avg.key.startswith("Optimizer.zero_grad"):
      continue
    total += ms
    for cls, pattern in TORCH_CLASSES.items():
      if re.search(pattern, avg.key):
        per_class[cls] += ms
        break
    else:
      per_class["other (loss, head, gate loop, copies)"] += ms
  return per_class, statistics.median(walls) * 1e3, total


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5, help="profiled steps per framework")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--torch-threads", type=int, default=2)
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--top", type=int, default=12, help="slowest XLA thunks listed")
  parser.add_argument("--dtype", default="float32", help="csg_jax's trunk dtype (model.dtype)")
  parser.add_argument("--xla-flags", default="", help="XLA_FLAGS for this run (before jax loads)")
  args = parser.parse_args(argv)
  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  from csg_jax.log import log  # pylint: disable=g-import-not-at-top

  load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())
  log(f"load average before: {load()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  jax_classes, thunks, jax_wall, instructions = profile_jax(args.steps, args.seed, args.dtype)
  thunk_total = sum(jax_classes.values())
  log(f"csg_jax CSG step: median wall {jax_wall:.0f} ms, thunks {thunk_total:.0f} ms "
      f"(load average {load()})")
  import jax  # pylint: disable=g-import-not-at-top
  result = {"jax_version": jax.__version__, "dtype": args.dtype,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_wall_ms": round(jax_wall, 1),
            "jax_thunks_ms": round(thunk_total, 1),
            "jax": {c: round(jax_classes.get(c, 0.0), 1) for c in JAX_CLASSES}}
  torch_result = None if args.skip_torch else profile_torch(args.steps, args.seed,
                                                             args.torch_threads)
  if torch_result is not None:
    torch_classes, torch_wall, torch_total = torch_result
    log(f"PyTorch CSG step: median wall {torch_wall:.0f} ms, ops' self time {torch_total:.0f} ms "
        f"(load average {load()})")
    result.update(torch_wall_ms=round(torch_wall, 1),
                  torch={c: round(v, 1) for c, v in torch_classes.most_common()})
  log("")
  log(f"| csg_jax {jax.__version__}, {args.dtype} (XLA thunks) | ms/step | share |")
  log("|---|---|---|")
  for cls, ms in result["jax"].items():
    log(f"| {cls} | {ms:.1f} | {ms / thunk_total:.0%} |")
  log(f"| thunks summed (concurrency {thunk_total / jax_wall:.2f}) | {thunk_total:.1f} | |")
  log(f"| **step (median wall)** | **{jax_wall:.1f}** | |")
  if torch_result is not None:
    log("")
    log("| PyTorch (ops' self CPU time) | ms/step | share |")
    log("|---|---|---|")
    for cls, ms in result["torch"].items():
      log(f"| {cls} | {ms:.1f} | {ms / torch_wall:.0%} |")
    log(f"| **step (median wall)** | **{torch_wall:.1f}** | |")
  log("")
  log("slowest XLA thunks (ms/step):")
  for name, ms in thunks.most_common(args.top):
    shape, opcode, _ = instructions[name]
    log(f"  {ms:7.1f}  {name}  {shape.split('{')[0]}  "
        f"[{jax_class(name, shape, opcode, instructions[name][2], BATCH)}]")
  log(f"load average after: {load()}")
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
