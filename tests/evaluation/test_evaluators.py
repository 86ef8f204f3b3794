"""Evaluators declared in config.evals run on the pretraining loop's schedule."""

import ml_collections
import numpy as np
import pytest

from simsiam_jax import config_validation, sharding, train
from simsiam_jax.evaluation import evaluators
from simsiam_jax.reporting import read_scalars


def test_due_at_step_0_every_n_epochs_and_at_the_end():
  due = [step for step in range(11) if evaluators.is_due(2, step, steps_per_epoch=3,
                                                         total_steps=10)]
  assert due == [0, 6, 10]
  assert [s for s in range(11) if evaluators.is_due(0, s, 3, 10)] == [10]


def test_unknown_evaluator_is_a_config_error(tiny_config):
  tiny_config.evals.fewshot = ml_collections.ConfigDict({'every_epochs': 1})
  with pytest.raises(config_validation.ConfigError, match=r'config\.evals\.fewshot: unknown'):
    evaluators.create_evaluators(tiny_config, sharding.create_mesh())


class _RecordingEvaluator:
  """Returns the sum of the backbone's stem kernel, so each call shows the weights it saw."""
  calls = []

  def __init__(self, eval_config, config, mesh):
    del config, mesh
    self.every_epochs = eval_config.every_epochs
    self.offset = eval_config.offset

  def run(self, backbone_variables):
    kernel = np.asarray(backbone_variables['params']['stem_conv']['kernel'])
    self.calls.append(kernel)
    return {'recorded': float(kernel.sum()) + self.offset}


def test_loop_runs_each_declared_evaluator_on_its_schedule(tiny_config, tmp_path, monkeypatch):
  monkeypatch.setitem(evaluators.EVALUATORS, 'recording', _RecordingEvaluator)
  _RecordingEvaluator.calls = []
  del tiny_config.evals['knn']  # Removing an evaluator skips it.
  tiny_config.evals.recording = ml_collections.ConfigDict({'every_epochs': 1, 'offset': 100.0})
  summary = train.train_and_evaluate(tiny_config, str(tmp_path))
  scalars = read_scalars(tmp_path)
  assert sorted(scalars['recorded']) == [0, 4, 8]  # 4 steps per epoch, 2 epochs.
  assert 'knn_top1' not in scalars and 'knn_top1' not in summary
  # Each call saw the weights of its step: the random init first, then trained ones.
  assert len(_RecordingEvaluator.calls) == 3
  assert not np.array_equal(_RecordingEvaluator.calls[0], _RecordingEvaluator.calls[-1])
  assert summary['recorded'] == pytest.approx(float(_RecordingEvaluator.calls[-1].sum()) + 100)
