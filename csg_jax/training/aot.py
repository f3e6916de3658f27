"""Ahead-of-time compilation of a run's steps for a TPU slice, from any host (libtpu needed, no
TPU): the trainer's own step functions and shardings over the slice's devices, an abstract
state and batch (nothing materialised, no data set), and per step what XLA says: memory per
chip, FLOPs and bytes, the collectives, a roofline step time.

Chip figures: the Google Cloud TPU documentation pages in CHIPS (docs/accelerators.md).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax

from csg_jax import optimizer as optimizer_lib
from csg_jax import platforms
from csg_jax import sharding
from csg_jax.data import sources
from csg_jax.errors import CSGError
from csg_jax.evaluation.predict import make_eval_fn
from csg_jax.log import log
from csg_jax.runs import setup as setup_lib
from csg_jax.training import memory
from csg_jax.training.loop import make_train_steps

GIB = memory.GIB


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_gib: float  # HBM per chip
  bf16_tflops: float  # peak dense bf16 TFLOP/s per chip
  hbm_gbps: float  # HBM bandwidth per chip, GB/s
  source: str
  min_libtpu: tuple[int, ...] = (0,)  # the first libtpu release seen to compile for it

  @property
  def f32_tflops(self) -> float:
    """JAX's default matmul precision on TPU runs float32 dots as one bfloat16 MXU pass: the
    bf16 peak (precision='highest' takes several passes and is slower)."""
    return self.bf16_tflops


CHIPS = {c.name: c for c in (
    Chip("v4", 32, 275, 1200, "https://cloud.google.com/tpu/docs/v4"),
    Chip("v5e", 16, 197, 819, "https://cloud.google.com/tpu/docs/v5e"),
    Chip("v5p", 95, 459, 2765, "https://cloud.google.com/tpu/docs/v5p"),
    # libtpu 0.0.42.1 (jax 0.10.2's pin) crashes compiling for v6e; 0.0.43.2 and 0.0.46.3 do not.
    Chip("v6e", 32, 918, 1640, "https://cloud.google.com/tpu/docs/v6e", (0, 0, 43, 2)),
)}
EXAMPLE_TOPOLOGIES = ("v5e:2x2", "v5e:4x4", "v4:2x2x1", "v4:2x2x2", "v5p:2x2x1", "v6e:2x2")
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")

def topology(name: str):
  """(Chip, the slice's compile-only devices) of a topology name such as "v5e:2x2"."""
  known = f"use <chip>:<shape> with chip one of {', '.join(CHIPS)}, e.g. " + ", ".join(
      EXAMPLE_TOPOLOGIES)
  match = _TOPOLOGY.match(name)
  if not match:
    raise CSGError(f"unknown TPU topology {name!r}: {known}")
  if not platforms.has_libtpu():
    raise CSGError('compiling for TPU needs libtpu: pip install "csg_jax[tpu]"')
  chip, version = CHIPS[match.group(1)], platforms.libtpu_version()
  if version and _release(version) < chip.min_libtpu:
    least = ".".join(map(str, chip.min_libtpu))
    raise CSGError(f"libtpu {version} crashes compiling for {chip.name} (a segmentation fault "
                   f"in XLA's TPU compiler): install libtpu {least} or later for {chip.name} "
                   f"topologies, e.g. pip install libtpu=={least} in an environment of its own")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Another process (any JAX process where libtpu is installed) may hold libtpu's lockfile; a
  # compile-only client touches no TPU, so it need not wait for it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no metadata server off Cloud TPU VMs
  try:
    with platforms.quiet_stderr():
      devices = topologies.get_topology_desc(name, "tpu").devices
  except Exception as e:  # pylint: disable=broad-except  (libtpu's own words, on one line)
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CSGError(f"TPU topology {name!r} is not available ({detail}): {known}") from e
  return chip, list(devices)


def _release(version: str) -> tuple[int, ...]:
  """(0, 0, 42, 1) of "0.0.42.1" (digits of each part; a suffix such as "dev" ignored)."""
  return tuple(int(re.match(r"\d*", part).group() or 0) for part in version.split("."))


def data_shape(config) -> tuple[tuple[int, int, int], int]:
  """((H, W, C), classes) the model sees, from the config (no data read)."""
  data = config.data
  size, channels, classes = sources.get(data.source).known_shape(data) or (None, 3, None)
  size = data.image_size or size
  classes = data.num_classes or classes
  if not size or not classes:
    raise CSGError(f"data.source {data.source!r} gives no image size or class count without "
                   "its data: set --config.data.image_size and --config.data.num_classes")
  return (size, size, channels), classes


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
# "%x = <shape> all-reduce(" or the "-done" half of an asynchronous pair (the result's shape).
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-done)?\(")


def _shape_bytes(text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count", "bytes"}} of the collectives in a compiled module's text, bytes from the
  result shapes (per chip, per step)."""
  out = {}
  for line in hlo_text.splitlines():
    if "-start(" in line:
      continue
    match = _OP.search(line)
    if match:
      entry = out.setdefault(match.group(2), {"count": 0, "bytes": 0})
      entry["count"] += 1
      entry["bytes"] += _shape_bytes(match.group(1))
  return out


def _first(analysis):
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return analysis or {}


@dataclasses.dataclass
class Target:
  """A run's setup on a slice: what every compile of its steps shares."""
  name: str
  chip: Chip
  devices: list
  setup: setup_lib.RunSetup
  classes: int
  memory_gib: float | None = None  # the memory a step must fit in per device; None: the HBM

  @property
  def chips(self) -> int:
    return len({tuple(d.coords) for d in self.devices})

  @property
  def per_chip(self) -> int:
    """Devices per chip: 1, or 2 where the topology lists each TensorCore (v4)."""
    return len(self.devices) // self.chips

  @property
  def device_memory_gib(self) -> float:
    return self.memory_gib or self.chip.hbm_gib / self.per_chip

  @property
  def hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  def steps(self) -> dict[str, tuple[Callable, bool]]:
    """{step name: (jitted function, is an eval step)}: every phase the plan uses, and eval."""
    out = {f"train_{phase}": (fn, False) for phase, fn in make_train_steps(self.setup).items()}
    out["eval"] = (make_eval_fn(self.setup.model, self.setup.mesh), True)
    return out


def target(config, topology_name: str, *, memory_gib: float | None = None,
           num_train_examples: int = 50_000) -> Target:
  """The run of `config` on a slice. memory_gib: what a step must fit in per device (less than
  the HBM keeps headroom); num_train_examples only sets the schedules' lengths."""
  if memory_gib is not None and memory_gib <= 0:
    raise CSGError(f"the memory to fit in must be > 0 GiB, not {memory_gib:g}")
  chip, devices = topology(topology_name)
  image_shape, classes = data_shape(config)
  setup = setup_lib.for_shapes(config, num_classes=classes, image_shape=image_shape,
                               num_train_examples=num_train_examples, devices=devices)
  return Target(topology_name, chip, devices, setup, classes, memory_gib)


_REQUIRED = re.compile(r"required[^(]*\(([\d.]+)G\)")


def _oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def compile_step(tgt: Target, fn, batch: int, eval_batch: bool, state=None,
                 name: str = "") -> dict[str, Any]:
  """Lowers and compiles one step (`name`, one of Target.steps) at a global batch; its figures
  (fits False, no figures, when XLA refuses for want of memory)."""
  state = tgt.setup.abstract_state() if state is None else state
  args = (state, sharding.abstract_batch(tgt.setup.mesh, batch, tgt.setup.image_shape,
                                         with_mask=eval_batch))
  try:
    compiled = fn.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except
    if not _oom(e):
      raise
    line = next((l for l in str(e).splitlines() if "memory" in l.lower()), str(e)[:200]).strip()
    need = _REQUIRED.search(line)
    out = {"global_batch": batch, "fits": False, "compile_error": line}
    if need:  # XLA's own figure: at least this much (temporaries alone), in its "G" (GiB)
      out["required_gib"] = float(need.group(1))
    return out
  reduced = None if eval_batch else reduced_elements(tgt, name.removeprefix("train_"), state)
  return _figures(tgt, compiled, batch, eval_batch, reduced)


def reduced_elements(tgt: Target, phase: str, state) -> tuple[int, int] | None:
  """(elements of the parameters a train phase's optimiser updates, elements of the batch-norm
  statistics) of a state: what one data-parallel step must all-reduce, each once. None for an
  unknown phase."""
  name = tgt.setup.plan.optimizer_of_phase.get(phase)
  if name is None:
    return None
  size = lambda x: math.prod(x.shape)
  trained = optimizer_lib.trained_leaves(state.trainable(), tgt.setup.plan.optimizers[name].freeze)
  return (sum(size(x) for x in trained),
          sum(size(x) for x in jax.tree_util.tree_leaves(state.batch_stats)))


def _figures(tgt: Target, compiled, batch: int, eval_batch: bool,
             reduced: tuple[int, int] | None = None) -> dict[str, Any]:
  sizes = memory.step_bytes(compiled)
  cost = _first(compiled.cost_analysis())
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  dtype = tgt.setup.config.model.dtype
  peak = tgt.chip.bf16_tflops if dtype in ("bfloat16", "float16") else tgt.chip.f32_tflops
  # Figures per device; a chip's peak and bandwidth are shared by its devices.
  seconds = max(flops * tgt.per_chip / (peak * 1e12),
                accessed * tgt.per_chip / (tgt.chip.hbm_gbps * 1e9))
  hlo = compiled.as_text()
  colls = collectives(hlo)
  images_per_s = batch / seconds if seconds > 0 else None
  return {
      "global_batch": batch, "per_host_batch": batch // tgt.hosts,
      "per_device_batch": batch // len(tgt.devices),
      "memory_gib": {k: v / GIB for k, v in sizes.items()},
      "fits": sizes["total"] <= tgt.device_memory_gib * GIB,
      "tflops_per_chip": flops / 1e12, "bytes_accessed_per_chip": accessed,
      "collectives": colls,
      "collective_bytes_per_chip": sum(c["bytes"] for c in colls.values()),
      "roofline_ms": seconds * 1e3,
      "images_per_s": images_per_s,
      "images_per_s_per_host": images_per_s / tgt.hosts if images_per_s else None,
      **({"trained_parameters": reduced[0]} if reduced else {}),
      "invariants": check_invariants(tgt, compiled, colls, eval_batch, reduced),
  }


def check_invariants(tgt: Target, compiled, colls, eval_batch: bool,
                     reduced: tuple[int, int] | None = None) -> list[str]:
  """What breaks data parallelism in a compiled step: the batch not split along "data", the
  state not replicated, gradients not all-reduced, or reduced more than once (all-reduce bytes
  beyond 4 bytes per trained parameter and 8 per batch-norm statistic, given `reduced`),
  activations gathered. [] when none."""
  problems = []
  state_in, batch_in = compiled.input_shardings[0]
  for s in jax.tree_util.tree_leaves(batch_in):
    if not s.is_equivalent_to(sharding.batch_sharding(tgt.setup.mesh), 1):
      problems.append(f"the batch is not sharded along {sharding.DATA_AXIS!r}: {s}")
      break
  for s in jax.tree_util.tree_leaves(state_in):
    if not s.is_fully_replicated:
      problems.append(f"a state leaf is not replicated: {s}")
      break
  if len(tgt.devices) > 1:
    if not eval_batch and "all-reduce" not in colls:
      problems.append("no all-reduce: gradients are not reduced across chips")
    if not eval_batch and reduced and "all-reduce" in colls:
      # float32 gradients; batch norm reduces two sums per channel forward and two backward;
      # 2 % and 4 KiB for the loss and the metrics.
      bound = 4 * (reduced[0] + 2 * reduced[1]) * 1.02 + 4096
      if colls["all-reduce"]["bytes"] > bound:
        problems.append(f"all-reduces move {colls['all-reduce']['bytes'] / 2**20:.1f} MiB per "
                        f"chip, more than the {reduced[0]:,} trained parameters' gradients and "
                        f"the {reduced[1]:,} batch-norm statistics' sums in float32 "
                        f"({bound / 2**20:.1f} MiB): something is reduced more than once")
    # Eval gathers its outputs (predictions, features) by design: replicated out_shardings.
    if not eval_batch and ("all-gather" in colls or "all-to-all" in colls):
      problems.append("activations or the batch are gathered across chips "
                      f"({', '.join(k for k in ('all-gather', 'all-to-all') if k in colls)})")
  return problems


def compile_all(tgt: Target, batch: int | None = None) -> dict[str, dict[str, Any]]:
  """Every step of the run compiled: the train steps at `batch` (default config.batch_size),
  eval at config.eval_batch_size."""
  config = tgt.setup.config
  state = tgt.setup.abstract_state()
  out = {}
  for name, (fn, is_eval) in tgt.steps().items():
    b = config.eval_batch_size if is_eval else (batch or config.batch_size)
    log(f"compiling {name} (global batch {b}) for {tgt.name} ...")
    out[name] = compile_step(tgt, fn, b, is_eval, state, name)
  return out


def train_steps_peak(tgt: Target, batch: int) -> tuple[bool, float | None]:
  """(whether every train step fits at this global batch, the largest step's total bytes per
  device; None where XLA refused a step for want of memory and gave no figure)."""
  state = tgt.setup.abstract_state()
  peak = 0.0
  for name, (fn, is_eval) in tgt.steps().items():
    if is_eval:
      continue
    log(f"probing {name} at global batch {batch} ...")
    step = compile_step(tgt, fn, batch, False, state, name)
    need = (step["memory_gib"]["total"] if "memory_gib" in step
            else step.get("required_gib"))  # XLA's own lower bound when it refused
    verdict = "fits" if step["fits"] else "does not fit"
    log(f"  {name} at global batch {batch}: {verdict}"
        + (f" ({need:.3g} of {tgt.device_memory_gib:.3g} GiB per device)" if need else ""))
    if need is None:
      return False, None
    peak = max(peak, need * GIB)
    if not step["fits"]:
      return False, peak
  return True, peak


def _line_crossing(points: dict[int, float], a: int, b: int, budget: float) -> int | None:
  """The per-device batch at which the line through the peaks measured at batches a and b
  reaches `budget` (rounded down); None without both or a rising line."""
  if a == b or a not in points or b not in points:
    return None
  slope = (points[b] - points[a]) / (b - a)
  if slope <= 0:
    return None
  return int(a + (budget - points[a]) // slope)


SAFEGUARD = 3  # bisect when this many probes have not halved the bracket


def max_global_batch(tgt: Target, limit: int = 1 << 20) -> int:
  """The largest global batch (a multiple of the device count, at most `limit`) at which every
  train step fits; 0 when not even one image per device fits.

  Each probe is a compile per train step (minutes for big models), so the search follows the
  memory, which grows about linearly with the batch: the next probe is where a line through two
  probes' memory reaches the device's. Until a batch fails, the line through the last two
  probes, aimed a little past its crossing; until one fits, the same line or halving; then the
  line through the bracket's ends (largest batch that fits, smallest that does not), with
  bisection when SAFEGUARD probes have not halved the bracket. It ends with a batch that fits
  and the next multiple that does not (or `limit`)."""
  unit = len(tgt.devices)
  budget = tgt.device_memory_gib * GIB
  points: dict[int, float] = {}  # per-device batch -> the largest train step's bytes
  lo, hi = 0, None  # per-device: the largest batch known to fit, the smallest known not to
  widths: list[int] = []
  probes: list[int] = []
  n = max(tgt.setup.config.batch_size // unit, 1)
  while True:
    fits, peak = train_steps_peak(tgt, n * unit)
    probes.append(n)
    if peak is not None:
      points[n] = peak
    if fits:
      lo = n
    else:
      hi = n
    upper = hi if hi is not None else limit // unit + 1  # first batch not to try
    if upper - lo <= 1:
      return lo * unit
    recent = [k for k in probes if k in points][-2:]
    last_line = _line_crossing(points, *recent, budget) if len(recent) == 2 else None
    if hi is None:  # every probe fitted so far: the last two's line, a little past its crossing
      guess = lo * 2 if last_line is None else last_line + max(last_line // 32, 1)
    elif not lo:  # none fitted yet: the last two's line, or halving
      guess = hi // 2 if last_line is None else last_line
    else:  # the line through the bracket's ends crosses the memory in [lo, hi)
      guess = _line_crossing(points, lo, hi, budget)
      widths.append(upper - lo)
      if guess is None or (len(widths) >= SAFEGUARD and widths[-1] > widths[-SAFEGUARD] // 2):
        guess = (lo + upper) // 2
    n = min(max(guess, lo + 1), upper - 1)


def summary(tgt: Target, steps: dict[str, dict[str, Any]],
            max_batch: int | None = None) -> dict[str, Any]:
  out = {"topology": tgt.name, "chip": tgt.chip.name, "chips": tgt.chips,
         "devices": len(tgt.devices), "hosts": tgt.hosts, "chip_memory_gib": tgt.chip.hbm_gib,
         "device_memory_gib": tgt.device_memory_gib,
         "peak_tflops": tgt.chip.bf16_tflops, "hbm_gbps": tgt.chip.hbm_gbps,
         "config": {"model": tgt.setup.config.model.name, "dtype": tgt.setup.config.model.dtype,
                    "method": tgt.setup.config.method,
                    "image_shape": list(tgt.setup.image_shape), "classes": tgt.classes},
         "jax": jax.__version__, "libtpu": platforms.libtpu_version(), "steps": steps}
  if max_batch is not None:
    out["max_global_batch"] = max_batch
  return out


def table(report: dict[str, Any]) -> str:
  """The per-step figures as a text table."""
  head = ("step", "batch", "args GiB", "out GiB", "temp GiB", "total GiB", "fits", "GFLOP",
          "coll MiB", "roof ms", "img/s", "img/s/host")
  rows = [head]
  for name, s in report["steps"].items():
    if "memory_gib" not in s:
      rows.append((name, str(s["global_batch"]), "-", "-", "-", "-", "no", "-", "-", "-", "-",
                   "-"))
      continue
    m = s["memory_gib"]
    rows.append((name, str(s["global_batch"]), f"{m['arguments']:.3f}", f"{m['outputs']:.3f}",
                 f"{m['temporaries']:.3f}", f"{m['total']:.3f}", "yes" if s["fits"] else "NO",
                 f"{s['tflops_per_chip'] * 1e3:,.3f}",
                 f"{s['collective_bytes_per_chip'] / 2**20:.2f}",
                 f"{s['roofline_ms']:.3f}", f"{s['images_per_s']:,.0f}",
                 f"{s['images_per_s_per_host']:,.0f}"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
  lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in rows]
  r = report
  title = (f"{r['config']['model']} ({r['config']['method']}, {r['config']['dtype']}) on "
           f"{r['topology']}: {r['chips']} {r['chip']} chip(s), {r['hosts']} host(s), "
           f"{r['chip_memory_gib']:g} GiB HBM per chip"
           + (f" (fitting in {r['device_memory_gib']:g} GiB)"
              if r["device_memory_gib"] * r["devices"] != r["chip_memory_gib"] * r["chips"] else "")
           + "; figures per "
           f"{'chip' if r['devices'] == r['chips'] else 'device (TensorCore)'} per step")
  return "\n".join([title, *lines])
