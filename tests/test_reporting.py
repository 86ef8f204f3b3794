import math
from unittest import mock

import numpy as np
import pytest
from absl import logging
from clu import metric_writers

from simsiam_jax import checkpointing, reporting


def recording_writer():
  return mock.create_autospec(metric_writers.MetricWriter, instance=True)


def _reporter(writer):
  return reporting.ProgressReporter(writer, total_steps=100, steps_per_epoch=10,
                                    z_std_target=1 / math.sqrt(64), collapse_fraction=0.2)


def _metrics(loss, z_std):
  return {'loss': np.float32(loss), 'learning_rate': np.float32(0.1),
          'z_std': np.float32(z_std), 'p_std': np.float32(z_std)}


def _report(reporter, steps_and_z_std, loss=-0.5):
  for step, z_std in steps_and_z_std:
    reporter.add(step, _metrics(loss, z_std))
  return reporter.report()


def test_window_average_is_logged_and_written(monkeypatch):
  writer = recording_writer()
  lines = []
  monkeypatch.setattr(logging, 'info', lambda msg, *args: lines.append(msg % args))
  summary = _report(_reporter(writer), [(9, 0.10), (10, 0.12)])
  assert summary['z_std'] == pytest.approx(0.11)
  step, scalars = writer.write_scalars.call_args.args
  assert step == 10 and scalars['z_std_target'] == pytest.approx(0.125)
  assert 'step 10/100 (epoch 1.00)' in lines[-1] and 'z-std 0.1100' in lines[-1]
  assert 'ETA' in lines[-1]


@pytest.mark.parametrize('z_stds,warned', [
    ([0.01, 0.02, 0.01], True),   # All below 20% of 1/sqrt(64) = 0.025.
    ([0.01, 0.03, 0.01], False),  # Not sustained over the window.
])
def test_collapse_warning_needs_a_whole_window_below_the_threshold(monkeypatch, z_stds, warned):
  warnings = []
  monkeypatch.setattr(logging, 'warning', lambda msg, *args: warnings.append(msg % args))
  _report(_reporter(recording_writer()), list(enumerate(z_stds, start=1)))
  assert bool(warnings) == warned
  if warned:
    assert 'Representation collapsing' in warnings[0]


def test_non_finite_loss_names_the_first_bad_step():
  reporter = _reporter(recording_writer())
  reporter.add(1, _metrics(-0.1, 0.1))
  reporter.add(2, _metrics(float('nan'), 0.1))
  reporter.add(3, _metrics(float('inf'), 0.1))
  with pytest.raises(checkpointing.NonFiniteLossError, match='step 2'):
    reporter.report()


@pytest.mark.parametrize('method,title,minimum', [('simsiam', 'SimSiam', True),
                                                  ('moco_v2', 'MoCo v2', False)])
def test_closing_summary_names_the_method_and_only_simsiam_has_a_loss_minimum(
    tiny_config, tmp_path, method, title, minimum):
  tiny_config.method = method
  result = {'start_step': 0, 'step': 8, 'total_steps': 8, 'loss': 1.5, 'z_std': 0.15,
            'z_std_target': 0.17}
  summary = reporting.closing_summary(tiny_config, str(tmp_path), result, 12.0,
                                      'configs/default.py', [f'--config.method={method}'])
  assert summary.splitlines()[0] == f'== {title} pretraining of {tmp_path} =='
  assert ('final loss    1.5000 (-1 is the minimum)' in summary) == minimum
  assert f'--config.method={method} --config.mode=knn' in summary


def test_closing_summary_of_a_preempted_linear_evaluation_says_how_to_resume(tiny_config,
                                                                             tmp_path):
  tiny_config.mode = 'linear_eval'
  result = {'mode': 'augmented views', 'step': 3, 'total_steps': 8}
  summary = reporting.closing_summary(tiny_config, str(tmp_path), result, 12.0,
                                      'configs/default.py', [])
  assert 'stopped at 3 of 8; rerun the same command to resume' in summary
  assert 'linear top-1' not in summary
