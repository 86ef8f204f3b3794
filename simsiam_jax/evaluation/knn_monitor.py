"""The kNN monitor: weighted-kNN top-1 of the backbone on a labeled train/eval split pair,
the evaluator config.evals.knn (during pretraining, and of a checkpoint in the 'knn' mode)."""

import time

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from simsiam_jax.data import input_pipeline
from simsiam_jax.evaluation import features, knn
from simsiam_jax.train_state import compute_dtype


def knn_top1(config: ml_collections.ConfigDict, knn_config: ml_collections.ConfigDict,
             backbone_variables, mesh: Mesh) -> float:
  """Top-1 accuracy in percent of config.data.eval_split against the bank of
  config.data.eval_train_split, all on device."""
  started = time.perf_counter()
  feature_fn = features.make_feature_fn(config.model, config.data, compute_dtype(config),
                                         mesh)
  train_batches, eval_batches = input_pipeline.create_eval_iterators(config)
  bank_features, bank_labels = zip(*features.feature_batches(feature_fn, backbone_variables,
                                                             train_batches(), mesh))
  bank, bank_labels = knn.build_feature_bank(bank_features, bank_labels, mesh)
  correct = total = 0
  for query_features, query_labels in features.feature_batches(feature_fn, backbone_variables,
                                                               eval_batches(), mesh):
    correct += knn.count_correct(query_features, query_labels, bank, bank_labels,
                                 k=knn_config.k, temperature=knn_config.temperature,
                                 num_classes=input_pipeline.num_classes(config), mesh=mesh)
    total += (query_labels != features.PAD_LABEL).sum()
  accuracy = 100.0 * int(jax.device_get(correct)) / max(int(jax.device_get(total)), 1)
  logging.info('kNN (k=%d, T=%g) top-1 %.2f%% on %s, bank of %d (%.1fs).', knn_config.k,
               knn_config.temperature, accuracy, config.data.eval_split,
               int((bank_labels != features.PAD_LABEL).sum()), time.perf_counter() - started)
  return accuracy


class KnnEvaluator:
  """config.evals.knn: {'knn_top1': kNN top-1 in percent}."""

  def __init__(self, knn_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
               mesh: Mesh):
    self.every_epochs = knn_config.every_epochs
    self._knn_config, self._config, self._mesh = knn_config, config, mesh

  def run(self, backbone_variables) -> dict[str, float]:
    return {'knn_top1': knn_top1(self._config, self._knn_config, backbone_variables,
                                 self._mesh)}
