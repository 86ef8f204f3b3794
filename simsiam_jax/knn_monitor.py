"""The kNN monitor: weighted-kNN top-1 of the backbone on a labeled train/eval split pair."""

import json
import os
import time

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from simsiam_jax import checkpointing, config_validation, features, input_pipeline, knn
from simsiam_jax import sharding


def knn_top1(config: ml_collections.ConfigDict, backbone_variables, mesh: Mesh) -> float:
  """Top-1 accuracy in percent of config.data.eval_split against the bank of
  config.data.eval_train_split, all on device."""
  started = time.perf_counter()
  feature_fn = features.make_feature_fn(config, mesh)
  train_batches, eval_batches = input_pipeline.create_eval_iterators(config)
  bank_features, bank_labels = zip(*features.feature_batches(feature_fn, backbone_variables,
                                                             train_batches(), mesh))
  bank, bank_labels = knn.build_feature_bank(bank_features, bank_labels, mesh)
  correct = total = 0
  for query_features, query_labels in features.feature_batches(feature_fn, backbone_variables,
                                                               eval_batches(), mesh):
    correct += knn.count_correct(query_features, query_labels, bank, bank_labels,
                                 k=config.knn.k, temperature=config.knn.temperature,
                                 num_classes=input_pipeline.num_classes(config), mesh=mesh)
    total += (query_labels != features.PAD_LABEL).sum()
  accuracy = 100.0 * int(jax.device_get(correct)) / max(int(jax.device_get(total)), 1)
  logging.info('kNN (k=%d, T=%g) top-1 %.2f%% on %s, bank of %d (%.1fs).', config.knn.k,
               config.knn.temperature, accuracy, config.data.eval_split,
               int((bank_labels != features.PAD_LABEL).sum()), time.perf_counter() - started)
  return accuracy


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """kNN top-1 of the latest checkpoint in config.pretrained_workdir (config.mode='knn')."""
  config_validation.validate_workdir(workdir)
  config_validation.validate_config(config, device_count=jax.device_count(),
                                    process_count=jax.process_count())
  input_pipeline.labeled_eval_splits(config)  # Data errors before reading the checkpoint.
  mesh = sharding.create_mesh()
  variables, _ = checkpointing.restore_backbone_variables(config.pretrained_workdir, config)
  backbone = jax.device_put(features.backbone_variables(**variables), sharding.replicated(mesh))
  result = {'knn_top1': knn_top1(config, backbone, mesh)}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'knn_eval.json'), 'w') as f:
      json.dump({'pretrained_workdir': config.pretrained_workdir, 'k': config.knn.k,
                 'temperature': config.knn.temperature, 'eval_split': config.data.eval_split,
                 **result}, f, indent=2)
  return result
