"""Backbone features of labeled images, the representation that kNN and linear probes score.

The backbone runs in inference mode (BatchNorm with its running statistics), as in the
official linear-evaluation code, on batch-sharded global arrays like the train step.
"""

from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from simsiam_jax import sharding
from simsiam_jax.data import preprocess
from simsiam_jax.models import resnet

# The label of padding examples in evaluation batches and feature banks; it never scores.
PAD_LABEL = -1


def backbone_variables(params, batch_stats) -> dict[str, Any]:
  """The backbone's part of SimSiam's variables."""
  return {'params': params['backbone'], 'batch_stats': batch_stats['backbone']}


def create_backbone(model_config: ml_collections.ConfigDict, dtype: Any) -> resnet.ResNet:
  return resnet.create_backbone(model_config.name, width=model_config.width,
                                cifar_stem=model_config.cifar_stem, dtype=dtype)


def make_feature_fn(model_config: ml_collections.ConfigDict,
                    data_config: ml_collections.ConfigDict, dtype: Any, mesh: Mesh) -> Callable:
  """jit(backbone variables, batch) -> (float32 features, labels with -1 on padding): the
  backbone of `model_config` computing in `dtype` on images normalised as `data_config` says."""
  backbone = create_backbone(model_config, dtype)

  def features(variables, batch):
    images = preprocess.normalize_images(batch['image'], data_config.mean, data_config.std,
                                         backbone.dtype)
    outputs = backbone.apply(variables, images, train=False).astype(jnp.float32)
    return outputs, jnp.where(batch['mask'], batch['label'], PAD_LABEL)

  batch_placement = sharding.batch_sharding(mesh)
  return jax.jit(features, in_shardings=(sharding.replicated(mesh), batch_placement),
                 out_shardings=(batch_placement, batch_placement))


def feature_batches(feature_fn: Callable, variables, batches: Iterable[dict],
                    mesh: Mesh) -> Iterator[tuple[jax.Array, jax.Array]]:
  """(features, labels) global arrays for each batch of this process's eval iterator."""
  for local_batch in batches:
    yield feature_fn(variables, sharding.global_batch_from_local(local_batch, mesh))


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array, in its local-batch order."""
  shards = sorted(array.addressable_shards, key=lambda shard: shard.index[0].start or 0)
  return np.concatenate([np.asarray(shard.data) for shard in shards])


def local_features(feature_fn: Callable, variables, batches: Iterable[dict],
                   mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
  """(features, labels) of this process's real examples, in host memory.

  Each process keeps its own shard, so the cache scales with the number of hosts.
  """
  features, labels = [], []
  for local_batch in batches:
    batch_features, _ = feature_fn(variables,
                                   sharding.global_batch_from_local(local_batch, mesh))
    mask = np.asarray(local_batch['mask'], bool)
    features.append(local_rows(batch_features)[mask])
    labels.append(np.asarray(local_batch['label'])[mask])
  return np.concatenate(features), np.concatenate(labels)
