"""Weighted kNN classification on l2-normalised features (Wu et al. 2018, InstDisc).

The monitor of the paper's Fig. 2: each query votes with its k most cosine-similar bank
features, neighbour i weighing exp(sim_i / temperature) for its label. The feature bank is
sharded over the mesh's `data` axis, so its size is bounded by the mesh's memory, not one
device's: every device finds the top k of its own shard and only those k per device are
gathered for the final choice.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from simsiam_jax import losses, sharding

_PAD_LABEL = -1


def shard_feature_bank(features: np.ndarray, labels: np.ndarray, mesh: Mesh):
  """Places the normalised bank on `mesh`, padded to a multiple of its size."""
  num_devices = mesh.devices.size
  padding = -len(features) % num_devices
  features = np.pad(np.asarray(features, np.float32), ((0, padding), (0, 0)))
  labels = np.pad(np.asarray(labels, np.int32), (0, padding), constant_values=_PAD_LABEL)
  placement = sharding.batch_sharding(mesh)
  return (jax.device_put(losses.l2_normalize(jnp.asarray(features)), placement),
          jax.device_put(labels, placement))


def _shard_top_k(queries, bank, bank_labels, *, k):
  similarities = queries @ bank.T
  similarities = jnp.where(bank_labels[None, :] == _PAD_LABEL, -jnp.inf, similarities)
  top_similarities, top_indices = jax.lax.top_k(similarities, k)
  return top_similarities, bank_labels[top_indices]


@functools.partial(jax.jit, static_argnames=('k', 'temperature', 'num_classes', 'mesh'))
def knn_class_scores(queries, bank, bank_labels, *, k: int, temperature: float,
                     num_classes: int, mesh: Mesh):
  """Per-class vote totals [num_queries, num_classes] for (unnormalised) query features."""
  queries = losses.l2_normalize(queries.astype(jnp.float32))
  shard_k = min(k, bank.shape[0] // mesh.devices.size)
  candidates = jax.shard_map(
      functools.partial(_shard_top_k, k=shard_k), mesh=mesh,
      in_specs=(PartitionSpec(), PartitionSpec(sharding.DATA_AXIS),
                PartitionSpec(sharding.DATA_AXIS)),
      out_specs=(PartitionSpec(None, sharding.DATA_AXIS),) * 2)(queries, bank, bank_labels)
  similarities, labels = candidates
  similarities, top = jax.lax.top_k(similarities, min(k, similarities.shape[1]))
  labels = jnp.take_along_axis(labels, top, axis=1)
  # Padding only wins a place when the bank has fewer than k real entries; it votes nothing.
  weights = jnp.where(labels == _PAD_LABEL, 0.0, jnp.exp(similarities / temperature))
  return jnp.einsum('qk,qkc->qc', weights, jax.nn.one_hot(labels, num_classes))


def knn_accuracy(query_features, query_labels, bank, bank_labels, *, k: int = 200,
                 temperature: float = 0.1, num_classes: int, mesh: Mesh,
                 query_batch_size: int = 1024) -> float:
  """Top-1 accuracy (in [0, 1]) of weighted kNN, querying in batches to bound memory."""
  correct = 0
  for start in range(0, len(query_features), query_batch_size):
    scores = knn_class_scores(jnp.asarray(query_features[start:start + query_batch_size]),
                              bank, bank_labels, k=k, temperature=temperature,
                              num_classes=num_classes, mesh=mesh)
    predictions = np.asarray(jnp.argmax(scores, axis=1))
    correct += int(np.sum(predictions == query_labels[start:start + query_batch_size]))
  return correct / len(query_features)
