"""Data parallelism without pmap: one Mesh over every device with a single axis, "data".

The batch is sharded along "data", the train state is replicated, and `jax.jit` inserts the
collectives. Each process builds only its own share of the global batch; the shares are joined
into one global array with `jax.make_array_from_process_local_data`.
"""

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from csg_jax import platforms
from csg_jax.errors import CSGError

DATA_AXIS = "data"


def _in_multi_task_slurm_job() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed when the run spans several processes.

  Manual launch: pass all three (the same coordinator "host:port" everywhere, a distinct
  process_id per process). On Cloud TPU VMs and multi-task SLURM jobs JAX finds them itself.
  A single process on one machine needs nothing.
  """
  manual = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in manual):
    if any(v is None for v in manual):
      raise CSGError("a manual multi-process launch needs --coordinator_address, --num_processes "
                     "and --process_id together")
    if not 0 <= process_id < num_processes:
      raise CSGError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif platforms.on_tpu_host() or _in_multi_task_slurm_job():
    jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> None:
  num_devices = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise CSGError(f"config.{name}={global_batch_size} must be a positive multiple of the "
                   f"{num_devices} devices in the mesh (set --config.{name})")


def abstract_batch(mesh: Mesh, batch_size: int, image_shape: Sequence[int], *,
                   with_mask: bool = False) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of a global batch as the data pipeline yields it (float32
  images, int32 labels; an eval batch's bool mask), for compiling steps ahead of the data."""
  data = batch_sharding(mesh)
  out = {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), np.float32, sharding=data),
         "label": jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=data)}
  if with_mask:
    out["mask"] = jax.ShapeDtypeStruct((batch_size,), np.bool_, sharding=data)
  return out


def to_global(local_batch, mesh: Mesh):
  """This process's share of a batch (numpy) -> global jax.Arrays sharded along "data"."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)
