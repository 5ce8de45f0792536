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
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize` when launched as a multi-process job.

  Hand-launched jobs (any platform, CPU included) set JAX_COORDINATOR_ADDRESS
  (host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in every
  process; SLURM jobs with several tasks are detected by JAX itself. Idempotent,
  and a no-op for a single process.

  Raises:
    ValueError: naming the missing or malformed environment variable.
  """
  if jax.distributed.is_initialized():
    return
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    counts = {}
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      value = os.environ.get(name, "")
      if not value.isdigit():
        raise ValueError(f"{name}: must be set to a non-negative integer alongside "
                         f"JAX_COORDINATOR_ADDRESS, got {value!r}")
      counts[name] = int(value)
    # Cross-process collectives on CPU need gloo; GPU and TPU ignore this flag.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=counts["JAX_NUM_PROCESSES"],
                               process_id=counts["JAX_PROCESS_ID"])
  elif os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all global devices).

  Evaluation passes `jax.local_devices()`: each process scores its own shard
  of a split with no collective inside the solves, then `gather_from_processes`.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding for values every device holds whole (parameters, optimiser state)."""
  return NamedSharding(mesh, PartitionSpec())


def replicate_locally(tree, mesh: Mesh):
  """Replicates arrays that every device already holds whole onto `mesh`.

  E.g. trained parameters, replicated over every device of every process,
  onto a process-local evaluation mesh (each process copies its own replica).
  """
  def local(value):
    return value.addressable_data(0) if isinstance(value, jax.Array) else value
  return jax.device_put(jax.tree.map(local, tree), replicated(mesh))


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


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name`; a no-op for one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gather_from_processes(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates each process's rows (leading axis) of every array, in process order.

  Every process gets the same result; processes may hold different row counts.
  A no-op for a single process.
  """
  if jax.process_count() == 1:
    return arrays
  counts = multihost_utils.process_allgather(np.asarray([len(next(iter(arrays.values())))]))
  counts = np.asarray(counts).reshape(-1)
  most = int(counts.max())
  out = {}
  for name, value in arrays.items():
    value = np.asarray(value)
    padded = np.zeros((most,) + value.shape[1:], value.dtype)
    padded[:len(value)] = value
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, most, ...]
    out[name] = np.concatenate([every[p, :counts[p]] for p in range(len(counts))])
  return out
