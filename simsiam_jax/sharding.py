"""The device mesh and the two placements the trainer uses.

Data parallelism only: the global batch is split over the `data` axis and everything else
is replicated. Because the train step is one jit over global arrays, reductions over the
batch (BatchNorm statistics, the loss mean) span all devices, as SyncBN does in PyTorch.
"""

from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all devices of the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch_from_local(local_batch, mesh: Mesh):
  """Assembles each process's share of a batch into one global, batch-sharded jax.Array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
