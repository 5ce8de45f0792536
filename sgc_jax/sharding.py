"""The one place that builds meshes and shardings, and knows about processes.

Training is data parallel: the batch is split over a 1-D mesh axis `data` that
spans every device of every process, parameters are replicated. Axes are
`AxisType.Auto` on purpose: `jax.make_mesh` now defaults to Explicit axes,
under which `nn.Embed`'s gather fails with a ShardingTypeError.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment variables set by launchers that start one process per host.
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as a multi-process job.

  Cloud TPU pods and SLURM clusters are auto-detected by JAX itself; the
  explicit environment variables cover hand-launched multi-host GPU jobs.
  Idempotent, and a no-op on a single process.
  """
  if jax.distributed.is_initialized():
    return
  if any(os.environ.get(name) for name in _MULTI_PROCESS_ENV) or os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all global devices)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding for values every device holds whole (parameters, optimiser state)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding for arrays whose leading (batch) axis is split across devices."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch; checks it divides over devices."""
  if global_batch_size % mesh.size:
    raise ValueError(f"training.batch_size: {global_batch_size} is not divisible by the "
                     f"{mesh.size} devices of the mesh")
  return global_batch_size // jax.process_count()


def to_global(local_batch, mesh: Mesh):
  """Assembles process-local numpy batches into one batch-sharded global array tree."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

