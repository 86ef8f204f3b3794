"""Linear evaluation and kNN of a pretrained checkpoint, end to end."""

import hashlib
import json
import os
import re
import types

import jax
import numpy as np
import pytest

from helpers import (TINY_RUN, _StopAtStep, kill_after_a_checkpoint, make_tiny_config,
                     run_main)
from simsiam_jax import sharding
from simsiam_jax.data import input_pipeline
from simsiam_jax.evaluation import evaluators, features, linear_eval
from simsiam_jax.studies import curves
from simsiam_jax import workdir as workdir_lib
from simsiam_jax.checkpointing import CheckpointError
from simsiam_jax.reporting import read_scalars
from simsiam_jax.train_state import compute_dtype


def _linear_config(pretrained_workdir, cached_features):
  config = make_tiny_config()
  config.mode = 'linear_eval'
  config.pretrained_workdir = pretrained_workdir
  config.linear.cached_features = cached_features
  config.linear.batch_size = 16
  config.linear.num_epochs = 2
  config.linear.eval_every_epochs = 1
  config.linear.log_every_steps = 2
  return config


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


@pytest.mark.parametrize('cached_features,mode', [(True, 'cached features'),
                                                   (False, 'augmented views')])
def test_linear_eval_reports_accuracy_and_leaves_the_backbone_alone(
    pretrained_workdir, tmp_path, cached_features, mode):
  config = _linear_config(pretrained_workdir, cached_features)
  mesh = sharding.create_mesh()
  backbone_before = jax.device_get(evaluators.restore_backbone(config, mesh))
  checkpoints_before = _tree_digest(os.path.join(pretrained_workdir, 'checkpoints'))

  config.data.synthetic_eval_examples = 37  # Not a whole number of batches of 16.
  result = linear_eval.train_and_evaluate(config, str(tmp_path))

  assert result['mode'] == mode
  assert 0 <= result['top1'] <= result['top5'] <= 100
  assert result['num_examples'] == 37  # The last partial batch is padded, not dropped.
  with open(tmp_path / 'linear_eval.json') as f:
    report = json.load(f)
  # Evaluated after every epoch, as main_lincls.py; the best is reported beside the last.
  assert sorted(report['history']) == ['1.0', '2.0']
  assert report['top1'] == result['top1'] == report['history']['2.0']['top1']
  assert result['best_top1'] == max(h['top1'] for h in report['history'].values())
  assert report['history'][str(result['best_epoch'])]['top1'] == result['best_top1']
  backbone_after = jax.device_get(evaluators.restore_backbone(config, mesh))
  jax.tree.map(np.testing.assert_array_equal, backbone_before, backbone_after)
  assert _tree_digest(os.path.join(pretrained_workdir, 'checkpoints')) == checkpoints_before


def _linear_report(workdir):
  with open(os.path.join(workdir, 'linear_eval.json')) as f:
    report = json.load(f)
  return report, read_scalars(workdir)['linear/train_loss']


@pytest.mark.parametrize('cached_features', [True, False])
def test_preempted_linear_eval_resumes_where_it_stopped_with_the_same_result(
    pretrained_workdir, tmp_path, monkeypatch, cached_features):
  """Stopped after step 6 of 8 (mid-epoch 2, after epoch 1's evaluation), resumed: the same
  losses from step 7 on and the same evaluations, the one before the stop included."""
  config = _linear_config(pretrained_workdir, cached_features)
  config.linear.log_every_steps = 1
  assert input_pipeline.linear_steps_per_epoch(config) == 4
  linear_eval.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  monkeypatch.setattr(workdir_lib, 'install_sigterm_handler', lambda: _StopAtStep(6))
  stopped = linear_eval.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert stopped == {'mode': stopped['mode'], 'step': 6, 'total_steps': 8}
  monkeypatch.undo()
  linear_eval.train_and_evaluate(config, str(tmp_path / 'resumed'))
  expected, expected_losses = _linear_report(tmp_path / 'uninterrupted')
  resumed, resumed_losses = _linear_report(tmp_path / 'resumed')
  assert sorted(resumed['history']) == ['1.0', '2.0']
  assert resumed == expected
  assert resumed_losses == expected_losses and sorted(resumed_losses) == list(range(1, 9))


def test_linear_eval_killed_mid_epoch_resumes_with_the_result_of_an_uninterrupted_run(
    pretrained_workdir, tmp_path):
  """SIGKILL (no chance to save) during the official recipe's augmented views; the
  uninterrupted run is the same config in this process."""
  config = _linear_config(pretrained_workdir, cached_features=False)
  config.linear.num_epochs = 20
  config.linear.log_every_steps = 1
  config.linear.checkpoint_every_steps = 3  # 4 steps per epoch: mid-epoch saves.
  args = [*TINY_RUN, *(f'--config.{field}={value}' for field, value in (
      ('mode', config.mode), ('pretrained_workdir', config.pretrained_workdir),
      ('linear.cached_features', False), ('linear.batch_size', config.linear.batch_size),
      ('linear.num_epochs', 20), ('linear.eval_every_epochs', config.linear.eval_every_epochs),
      ('linear.log_every_steps', 1), ('linear.checkpoint_every_steps', 3)))]
  linear_eval.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  killed = tmp_path / 'killed'
  saved = kill_after_a_checkpoint(args, killed, total_steps=80)
  result = run_main(*args, f'--workdir={killed}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed the linear evaluation from the checkpoint of step {saved}' in result.stderr
  assert _linear_report(killed) == _linear_report(tmp_path / 'uninterrupted')


def test_linear_eval_refuses_to_resume_another_evaluation(pretrained_workdir, tmp_path):
  config = _linear_config(pretrained_workdir, cached_features=True)
  config.linear.num_epochs = 1
  linear_eval.train_and_evaluate(config, str(tmp_path))
  old_lr, config.linear.base_lr = config.linear.base_lr, config.linear.base_lr / 2
  with pytest.raises(CheckpointError,
                     match=re.escape(f'config.linear.base_lr: {old_lr} -> {old_lr / 2}')):
    linear_eval.train_and_evaluate(config, str(tmp_path))
  with pytest.raises(CheckpointError, match=r'config\.mode: pretrain -> linear_eval'):
    linear_eval.train_and_evaluate(config, pretrained_workdir)


def test_frozen_backbone_features_do_not_depend_on_the_rest_of_the_batch(pretrained_workdir):
  """BatchNorm in inference mode: an image's features are the same in any batch."""
  config = _linear_config(pretrained_workdir, cached_features=True)
  mesh = sharding.create_mesh()
  backbone = evaluators.restore_backbone(config, mesh)
  feature_fn = features.make_feature_fn(config.model, config.data, compute_dtype(config),
                                         mesh)
  batch = next(input_pipeline.create_eval_iterators(config)[1]())
  shuffled = {k: np.concatenate([v[:8], v[8:][::-1]]) for k, v in batch.items()}
  first = features.local_rows(feature_fn(backbone, sharding.global_batch_from_local(batch,
                                                                                    mesh))[0])
  second = features.local_rows(feature_fn(backbone, sharding.global_batch_from_local(shuffled,
                                                                                     mesh))[0])
  np.testing.assert_allclose(first[:8], second[:8], rtol=1e-5, atol=1e-6)


def test_knn_mode_evaluates_a_checkpoint(pretrained_workdir, tmp_path):
  result = run_main(*TINY_RUN, '--config.mode=knn',
                    f'--config.pretrained_workdir={pretrained_workdir}',
                    '--config.evals.knn.k=10', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'knn_eval.json') as f:
    report = json.load(f)
  assert 0 <= report['knn_top1'] <= 100 and report['k'] == 10


def test_curves_of_a_run_are_read_per_epoch_and_plotted(pretrained_workdir, tmp_path):
  run_curves = curves.read_curves(pretrained_workdir)  # Steps per epoch from its config.
  assert max(run_curves['loss']) == 2.0 and min(run_curves['loss']) == 0.25  # 4 steps/epoch.
  assert list(run_curves['knn_top1']) == [0.0, 1.0, 2.0]  # At step 0 and every epoch.
  curves.plot_curves({'tiny': run_curves}, str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').stat().st_size > 10_000


def _logits_ranking(label_rank, num_classes=7):
  """Logits of one example whose label `label` comes at `rank` (1 = highest)."""
  label, rank = label_rank
  order = [c for c in range(num_classes) if c != label]
  order.insert(rank - 1, label)
  logits = np.zeros(num_classes, np.float32)
  logits[order] = np.arange(num_classes, 0, -1)
  return logits


def test_top1_and_top5_count_hand_built_logits_and_skip_padding():
  """Labels ranked 1st, 2nd, 5th and 6th by their logits, then one more 1st and three
  padding rows (label -1): top-1 2/5, top-5 4/5."""
  ranks = [(2, 1), (3, 2), (0, 5), (1, 6), (4, 1)]
  logits = np.stack([_logits_ranking(r) for r in ranks] + [_logits_ranking((0, 1))] * 3)
  labels = np.array([label for label, _ in ranks] + [-1] * 3, np.int32)
  classifier = types.SimpleNamespace(apply_fn=lambda variables, x: x, params={})
  batches = [(logits[:4], labels[:4]), (logits[4:], labels[4:])]
  assert linear_eval.evaluate(classifier, batches) == {'top1': 40.0, 'top5': 80.0,
                                                       'num_examples': 5}


def test_cached_linear_training_sees_every_feature_each_epoch_the_last_batch_padded(
    monkeypatch):
  """20 cached feature rows in batches of 8: 3 steps an epoch, the last with 4 rows and 4
  padding rows (label PAD_LABEL), then a new order."""
  config = make_tiny_config()
  config.linear.batch_size = 8
  rows = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  monkeypatch.setattr(input_pipeline, 'create_eval_iterators', lambda config: (list, None))
  monkeypatch.setattr(features, 'local_features', lambda *args: (rows, np.arange(20) % 7))
  batches = linear_eval.cached_feature_batches(config, None, None, sharding.create_mesh(),
                                               steps_per_epoch=3, start_step=0)
  epoch = [jax.device_get(next(batches)) for _ in range(3)]
  labels = np.concatenate([y for _, y in epoch])
  seen = np.concatenate([x[:, 0] for x, y in epoch])[labels != features.PAD_LABEL]
  assert sorted(seen) == list(range(20)) and np.sum(labels == features.PAD_LABEL) == 4
  assert all(np.all(y != features.PAD_LABEL) for _, y in epoch[:2])
  assert np.all(jax.device_get(next(batches))[1] != features.PAD_LABEL)
