"""What `python -m simsiam_jax.main` runs for each config.mode; kept apart from main's flags
so that tests can run a mode in-process."""

import ml_collections

from simsiam_jax import config_validation, train
from simsiam_jax.evaluation import evaluators, linear_eval
from simsiam_jax.scale import pod_plan


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs the `train_and_evaluate` of config.mode; returns what it returns."""
  config_validation.validate_mode(config)
  if config.dry_run:
    return pod_plan.run(config, workdir)
  run_fn = {'pretrain': train.train_and_evaluate,
            'linear_eval': linear_eval.train_and_evaluate,
            'knn': evaluators.evaluate_checkpoint}[config.mode]
  return run_fn(config, workdir)
