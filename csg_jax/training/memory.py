"""What a compiled step needs in device memory, what a device has, and the refusal of a step
that cannot fit, before the first step runs (instead of an allocator error minutes later)."""

from __future__ import annotations

from collections.abc import Sequence

from csg_jax.errors import CSGError

GIB = float(1 << 30)


def step_bytes(compiled) -> dict[str, int]:
  """Per device: arguments, outputs, temporaries, aliased (donated buffers reused as outputs),
  code and their total (arguments + outputs - aliased + temporaries + code), from XLA's memory
  analysis of a compiled executable."""
  mem = compiled.memory_analysis()
  sizes = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
           "temporaries": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes,
           "code": mem.generated_code_size_in_bytes}
  sizes["total"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                    + sizes["temporaries"] + sizes["code"])
  return sizes


def device_memory_bytes(devices: Sequence) -> int | None:
  """The smallest memory limit of `devices` as their runtime reports it (GPU, TPU), or None
  where it reports none (CPU: host memory, no fixed limit)."""
  limits = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except  (a backend without the query)
      stats = None
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return min(limits) if limits else None


def check_fits(sizes: dict[str, int], capacity: int | None, *, step: str, device: str,
               batch_size: int, num_devices: int, dtype: str) -> None:
  """One CSGError line when a step needs more than `capacity` bytes per device."""
  if capacity is None or sizes["total"] <= capacity:
    return
  parts = ", ".join(f"{k} {sizes[k] / GIB:.2f}" for k in ("arguments", "outputs", "temporaries")
                    if sizes[k])
  fixes = [f"a smaller --config.batch_size (now {batch_size}, {batch_size // num_devices} per "
           "device)"]
  if dtype == "float32":
    fixes.append("--config.model.dtype=bfloat16")
  fixes.append("more devices")
  raise CSGError(f"the {step} step needs {sizes['total'] / GIB:.2f} GiB per device ({parts} "
                 f"GiB) but {device} has {capacity / GIB:.2f} GiB: nothing was trained or "
                 f"written. Use {', or '.join(fixes)}.")
