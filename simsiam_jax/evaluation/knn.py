"""Weighted kNN classification on l2-normalised features (Wu et al. 2018, InstDisc).

The monitor of the paper's Fig. 2: each query votes with its k most cosine-similar bank
features, neighbour i weighing exp(sim_i / temperature) for its label. The feature bank is
sharded over the mesh's `data` axis, so its size is bounded by the mesh's memory, not one
device's: every device finds the top k of its own shard and only those k per device are
gathered for the final choice.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from simsiam_jax import losses, sharding
from simsiam_jax.evaluation.features import PAD_LABEL


def build_feature_bank(features: Sequence[jax.Array], labels: Sequence[jax.Array], mesh: Mesh):
  """One l2-normalised bank, sharded over `mesh`, from batches of features and labels.

  Batches may be device arrays in any placement; label -1 marks padding, which never votes.
  Nothing passes through host memory, so banks of any size and multi-host runs work alike.
  """
  num_devices = mesh.devices.size

  def concatenate(features, labels):
    features = losses.l2_normalize(jnp.concatenate(features).astype(jnp.float32))
    labels = jnp.concatenate(labels).astype(jnp.int32)
    padding = -features.shape[0] % num_devices
    return (jnp.pad(features, ((0, padding), (0, 0))),
            jnp.pad(labels, (0, padding), constant_values=PAD_LABEL))

  placement = sharding.batch_sharding(mesh)
  return jax.jit(concatenate, out_shardings=(placement, placement))(list(features), list(labels))


def _shard_top_k(queries, bank, bank_labels, *, k):
  similarities = queries @ bank.T
  similarities = jnp.where(bank_labels[None, :] == PAD_LABEL, -jnp.inf, similarities)
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
  weights = jnp.where(labels == PAD_LABEL, 0.0, jnp.exp(similarities / temperature))
  return jnp.einsum('qk,qkc->qc', weights, jax.nn.one_hot(labels, num_classes))


@functools.partial(jax.jit, static_argnames=('k', 'temperature', 'num_classes', 'mesh'))
def count_correct(queries, query_labels, bank, bank_labels, *, k: int, temperature: float,
                  num_classes: int, mesh: Mesh):
  """How many queries kNN classifies right; padding queries (label -1) never count."""
  scores = knn_class_scores(queries, bank, bank_labels, k=k, temperature=temperature,
                            num_classes=num_classes, mesh=mesh)
  return jnp.sum(jnp.argmax(scores, axis=1) == query_labels)
