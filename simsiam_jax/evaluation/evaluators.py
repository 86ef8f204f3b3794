"""Evaluators of the backbone that pretraining runs, declared in config.evals (as in
big_vision): `config.evals.<name>` holds `every_epochs` and the evaluator's own settings.

An evaluator is made by `EVALUATORS[name](eval_config, config, mesh)` and has
  run(backbone_variables) -> {metric name: value}
which the loop calls at step 0, every `every_epochs` epochs and at the end, writing the
metrics to TensorBoard and the run's summary.
"""

import json
import os
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from simsiam_jax import checkpointing, config_validation
from simsiam_jax.data import input_pipeline
from simsiam_jax.evaluation import features, knn_monitor
from simsiam_jax import sharding
from simsiam_jax import workdir as workdir_lib

EVALUATORS = {'knn': knn_monitor.KnnEvaluator}


def create_evaluators(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
  """{name: evaluator} of config.evals; ConfigError on an unknown name."""
  unknown = [name for name in config.evals if name not in EVALUATORS]
  if unknown:
    raise config_validation.ConfigError(
        f'config.evals.{unknown[0]}: unknown evaluator; choose from {", ".join(EVALUATORS)}')
  return {name: EVALUATORS[name](config.evals[name], config, mesh) for name in config.evals}


def is_due(every_epochs: int, step: int, steps_per_epoch: int, total_steps: int) -> bool:
  """At the end, and every `every_epochs` from step 0 (the random-init baseline) on."""
  every = every_epochs * steps_per_epoch
  return step == total_steps or (every > 0 and step % every == 0)


def restore_backbone(config: ml_collections.ConfigDict, mesh: Mesh):
  """The backbone variables of config.pretrained_workdir's latest checkpoint, replicated on
  `mesh`; the checkpoint's model must be the one this config describes."""
  variables, _ = checkpointing.restore_pretrained_variables(config.pretrained_workdir, config)
  return jax.device_put(features.backbone_variables(**variables), sharding.replicated(mesh))


def write_result(workdir: str, filename: str, config: ml_collections.ConfigDict,
                 result: dict[str, Any]):
  """`workdir/filename`: the result of evaluating config.pretrained_workdir (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, filename), 'w') as f:
      json.dump({'pretrained_workdir': config.pretrained_workdir,
                 'eval_split': config.data.eval_split, **result}, f, indent=2)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """kNN top-1 of the latest checkpoint in config.pretrained_workdir (config.mode='knn'),
  with the settings of config.evals.knn; written to `workdir/knn_eval.json`."""
  workdir_lib.validate(workdir)
  config_validation.validate_config(config, device_count=jax.device_count(),
                                    process_count=jax.process_count())
  config_validation.require('knn' in config.evals, 'config.evals', list(config.evals),
                            "the 'knn' mode reads config.evals.knn")
  input_pipeline.labeled_eval_splits(config)  # Data errors before reading the checkpoint.
  mesh = sharding.create_mesh()
  result = knn_monitor.KnnEvaluator(config.evals.knn, config, mesh).run(
      restore_backbone(config, mesh))
  write_result(workdir, 'knn_eval.json', config,
               {'k': config.evals.knn.k, 'temperature': config.evals.knn.temperature, **result})
  return result
