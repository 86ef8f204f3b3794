"""PyTorch checkpoints in and out: every imported format, resume, evaluation, round trips,
detectron2 names, and clear errors."""

import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
import torch

import torch_reference as ref
from configs import imagenet
from helpers import make_tiny_config
from simsiam_jax import checkpointing, convert
from simsiam_jax.data import input_pipeline
from simsiam_jax.evaluation import evaluators, linear_eval
from simsiam_jax import sharding, train
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model, torchvision_format
from simsiam_jax.train_state import create_train_state
from helpers import REPO_ROOT, TINY_RUN


def tiny_torch_backbone(config, seed=0):
  """torchvision's ResNet-18 (CIFAR stem) at the tiny config's width, with random BN
  parameters and statistics so that nothing is at its default."""
  torch.manual_seed(seed)
  return ref.randomize_batch_norm(ref.resnet18(width=config.model.width, cifar_stem=True))


def tiny_official_simsiam(config, seed=0):
  torch.manual_seed(seed)
  backbone = lambda **kwargs: ref.resnet18(width=config.model.width, cifar_stem=True, **kwargs)
  model = ref.SimSiam(backbone, dim=config.model.projector_dim,
                      pred_dim=config.model.predictor_hidden_dim,
                      projector_layers=config.model.projector_layers,
                      projector_hidden_dim=config.model.projector_hidden_dim)
  return ref.randomize_batch_norm(model)


def numpy_state(model, prefix=''):
  return {prefix + k: v.detach().numpy() for k, v in model.state_dict().items()}


def stored_state(workdir, config):
  """(state, step) of the workdir's checkpoint, restored into the config's train state."""
  mesh = sharding.create_mesh()
  tx = simsiam.create_optimizer(config, input_pipeline.pretrain_steps_per_epoch(config))
  target = create_train_state(jax.random.key(0), config, create_model(config.model), tx, mesh)
  with checkpointing.Checkpointer(workdir, max_to_keep=3, save_every_steps=1000) as ckpt:
    return ckpt.restore(target)


def assert_backbone_is(variables, torch_state, config):
  exported = torchvision_format.to_torch(
      {c: jax.device_get(variables[c]['backbone']) for c in ('params', 'batch_stats')},
      torchvision_format.backbone_layers(config.model.name))
  expected = {k: v for k, v in torch_state.items()
              if not k.startswith('fc.') and 'num_batches' not in k}
  assert sorted(k for k in exported if 'num_batches' not in k) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_torchvision_round_trip_gives_back_identical_tensors(tmp_path):
  config = make_tiny_config()
  model = tiny_torch_backbone(config)
  torch.save(model.state_dict(), tmp_path / 'resnet.pth')
  result = convert.import_torch(config, str(tmp_path / 'run'), str(tmp_path / 'resnet.pth'))
  assert result == {'format': 'torchvision', 'step': 0, 'whole_model': False}
  convert.export_torchvision(config, str(tmp_path / 'run'), str(tmp_path / 'out.pth'))

  exported = torch.load(tmp_path / 'out.pth')
  original = model.state_dict()
  assert sorted(exported) == sorted(k for k in original if not k.startswith('fc.'))
  for key, value in exported.items():
    assert torch.equal(value, original[key]), key
  fresh = ref.resnet18(width=config.model.width, cifar_stem=True)
  missing, unexpected = fresh.load_state_dict(exported, strict=False)
  assert sorted(missing) == ['fc.bias', 'fc.weight'] and not unexpected
  # The heads the file lacks start from the config's initialisation.
  state, step = stored_state(tmp_path / 'run', config)
  assert step == 0 and 'predictor' in state.params


def save_official_checkpoint(config, path, epoch=1):
  """checkpoint_0099.pth.tar's layout: DDP-wrapped state dict, epoch, SGD momentum buffers
  (after one step of the official optimizer); returns (model, optimizer)."""
  model = tiny_official_simsiam(config)
  sgd = ref.official_optimizer(model, 0.1, 0.9, 1e-4)
  size = config.data.image_size
  model.train()
  ref.simsiam_loss(*model(torch.randn(8, 3, size, size), torch.randn(8, 3, size, size))).backward()
  sgd.step()
  torch.save({'epoch': epoch, 'arch': 'resnet18', 'state_dict': numpy_to_torch(numpy_state(
      model, 'module.')), 'optimizer': sgd.state_dict()}, path)
  return model, sgd


def test_official_pretraining_checkpoint_imports_whole_and_pretraining_resumes(tmp_path):
  """The imported run continues at step epoch x steps_per_epoch with the official
  momentum."""
  config = make_tiny_config()
  model, sgd = save_official_checkpoint(config, tmp_path / 'checkpoint_0000.pth.tar')

  workdir = tmp_path / 'run'
  result = convert.import_torch(config, str(workdir), str(tmp_path / 'checkpoint_0000.pth.tar'))
  steps_per_epoch = input_pipeline.pretrain_steps_per_epoch(config)
  assert result == {'format': 'simsiam', 'step': steps_per_epoch, 'whole_model': True}

  state, step = stored_state(workdir, config)
  assert step == int(state.step) == steps_per_epoch
  layers = torchvision_format.simsiam_layers(config.model.name, config.model.projector_layers)
  expected = torchvision_format.fold_frozen_projector_bias(numpy_state(model),
                                                           config.model.projector_layers, '')
  exported = torchvision_format.to_torch(jax.device_get({'params': state.params,
                                                         'batch_stats': state.batch_stats}),
                                         layers)
  assert len(exported) > 60
  for key, value in exported.items():
    if 'num_batches' not in key:
      np.testing.assert_array_equal(value, expected[key], err_msg=key)
  # Every momentum buffer of the official optimizer is in our SGD's trace.
  traces = [node.trace for node in jax.tree.leaves(
      state.opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))
             if isinstance(node, optax.TraceState)]
  assert len(traces) == 2  # The encoder's and the predictor's SGD, each masked to its part.
  momentum = jax.tree.map(lambda a, b: b if isinstance(a, optax.MaskedNode) else a, *traces,
                          is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  exported_momentum = torchvision_format.to_torch({'params': jax.device_get(momentum)}, layers)
  by_name = dict(model.named_parameters())
  for key, value in exported_momentum.items():
    np.testing.assert_allclose(value, sgd.state[by_name[key]]['momentum_buffer'].numpy(),
                               err_msg=key)
  # The lr schedule continues from that step.
  assert all(int(c) == steps_per_epoch for c in jax.tree.leaves(state.opt_state)
             if getattr(c, 'dtype', None) == np.int32)

  config.num_epochs = 2
  summary = train.train_and_evaluate(config, str(workdir))
  assert np.isfinite(summary['loss'])
  assert stored_state(workdir, config)[1] == 2 * steps_per_epoch


def test_an_official_checkpoint_imports_with_the_imagenet_config_and_no_data(tmp_path):
  """configs/imagenet.py where ImageNet is not prepared: the checkpoint's epoch becomes a
  step through the config's declared training-set size (1,281,167 images, batch 512), and
  nothing is read from the data directory."""
  config = imagenet.get_config()
  tiny = make_tiny_config()
  config.model, config.data.image_size = tiny.model, tiny.data.image_size
  config.data.data_dir = str(tmp_path / 'no_tensorflow_datasets_here')
  save_official_checkpoint(config, tmp_path / 'checkpoint_0099.pth.tar', epoch=100)
  result = convert.import_torch(config, str(tmp_path / 'run'),
                                str(tmp_path / 'checkpoint_0099.pth.tar'))
  assert result == {'format': 'simsiam', 'step': 100 * (1_281_167 // 512), 'whole_model': True}
  assert not os.path.exists(config.data.data_dir)


def test_training_refuses_a_declared_training_set_size_it_does_not_find():
  config = make_tiny_config()
  config.data.train_examples = 65
  with pytest.raises(input_pipeline.DataError,
                     match=r'config.data.train_examples=65.*has 64 examples'):
    input_pipeline.num_pretrain_examples(config)
  config.data.train_examples = 64
  assert input_pipeline.num_pretrain_examples(config) == 64


def numpy_to_torch(state):
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


@pytest.mark.parametrize('source,prefix,extra', [
    ('moco', 'module.encoder_q.', {'module.encoder_q.fc.0.weight': np.zeros((4, 32)),
                                   'module.encoder_k.conv1.weight': np.zeros((4, 3, 3, 3)),
                                   'module.queue': np.zeros((128, 16))}),
    ('simsiam_linear', 'module.', {'module.fc.weight': np.zeros((10, 32)),
                                   'module.fc.bias': np.zeros(10)}),
])
def test_backbone_formats_import_the_backbone_and_evaluate(tmp_path, source, prefix, extra):
  """MoCo v2 and official linear-eval checkpoints: backbone imported, heads ignored; the
  result is a pretrained workdir for the knn and linear_eval modes."""
  config = make_tiny_config()
  model = tiny_torch_backbone(config)
  state = {**numpy_state(model, prefix), **extra}
  torch.save({'epoch': 90, 'state_dict': numpy_to_torch(state)}, tmp_path / 'in.pth.tar')
  workdir = str(tmp_path / 'run')
  assert convert.import_torch(config, workdir, str(tmp_path / 'in.pth.tar'))['format'] == source
  stored, step = stored_state(workdir, config)
  assert step == 0
  assert_backbone_is({'params': stored.params, 'batch_stats': stored.batch_stats},
                     numpy_state(model), config)

  config.pretrained_workdir = workdir
  config.evals.knn.k = 5
  assert 0 <= evaluators.evaluate_checkpoint(config, str(tmp_path / 'knn'))['knn_top1'] <= 100
  config.linear.batch_size, config.linear.num_epochs, config.linear.cached_features = 16, 1, True
  assert 'top1' in linear_eval.train_and_evaluate(config, str(tmp_path / 'linear'))


def test_detectron2_export_uses_mocos_names(tmp_path):
  config = make_tiny_config()
  model = tiny_torch_backbone(config)
  torch.save(model.state_dict(), tmp_path / 'resnet.pth')
  convert.import_torch(config, str(tmp_path / 'run'), str(tmp_path / 'resnet.pth'))
  convert.export_detectron2(config, str(tmp_path / 'run'), str(tmp_path / 'out.pkl'))
  with open(tmp_path / 'out.pkl', 'rb') as f:
    exported = pickle.load(f)
  assert exported['__author__'] == 'simsiam_jax' and exported['matching_heuristics'] is True
  weights = exported['model']
  original = model.state_dict()
  for d2_name, tv_name in (('stem.conv1.weight', 'conv1.weight'),
                           ('stem.conv1.norm.running_var', 'bn1.running_var'),
                           ('res2.0.conv1.weight', 'layer1.0.conv1.weight'),
                           ('res2.1.conv2.norm.bias', 'layer1.1.bn2.bias'),
                           ('res3.0.shortcut.weight', 'layer2.0.downsample.0.weight'),
                           ('res5.0.shortcut.norm.running_mean', 'layer4.0.downsample.1.running_mean')):
    assert isinstance(weights[d2_name], np.ndarray)
    np.testing.assert_array_equal(weights[d2_name], original[tv_name].numpy())
  assert len(weights) == len([k for k in original if not k.startswith('fc.')])
  assert not any('layer' in k or 'bn' in k or 'downsample' in k for k in weights)


def run_convert(*args):
  return subprocess.run([sys.executable, '-m', 'simsiam_jax.convert', *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)


def one_error_line(result):
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


def test_command_line_import_export_and_a_shape_mismatch(tmp_path):
  """The README's commands; a checkpoint of another width is refused naming the key and both
  shapes, and nothing is written."""
  config = make_tiny_config()
  torch.save(tiny_torch_backbone(config).state_dict(), tmp_path / 'resnet.pth')
  tiny = [arg for arg in TINY_RUN if arg.startswith('--config')]
  result = run_convert(*tiny, f'--workdir={tmp_path / "run"}',
                       f'--import_torch={tmp_path / "resnet.pth"}')
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_convert(*tiny, f'--workdir={tmp_path / "run"}',
                       f'--export_torchvision={tmp_path / "out.pth"}')
  assert result.returncode == 0 and (tmp_path / 'out.pth').exists(), result.stderr[-3000:]

  wide = [*tiny, '--config.model.width=8']
  error = one_error_line(run_convert(*wide, f'--workdir={tmp_path / "wide"}',
                                     f'--import_torch={tmp_path / "resnet.pth"}'))
  assert 'conv1.weight' in error and '(4, 3, 3, 3)' in error and '(8, 3, 3, 3)' in error
  assert not (tmp_path / 'wide' / 'checkpoints').exists()


@pytest.mark.parametrize('problem,expected', [
    ('missing', 'no file at'),
    ('not_torch', 'not a readable PyTorch checkpoint'),
    ('unknown_keys', 'not a known format'),
    ('missing_key', 'has no key layer4.1.bn2.running_var'),
    ('existing_checkpoints', 'already has checkpoints'),
])
def test_bad_imports_are_clear_errors_and_write_nothing(tmp_path, problem, expected):
  config = make_tiny_config()
  path = tmp_path / 'in.pth'
  state = tiny_torch_backbone(config).state_dict()
  if problem == 'not_torch':
    path.write_bytes(b'not a checkpoint')
  elif problem == 'unknown_keys':
    torch.save({'weight': torch.zeros(3)}, path)
  elif problem == 'missing_key':
    del state['layer4.1.bn2.running_var']
    torch.save(state, path)
  else:
    torch.save(state, path)
  workdir = tmp_path / 'run'
  if problem == 'existing_checkpoints':
    convert.import_torch(config, str(workdir), str(path))
  if problem == 'missing':
    path = tmp_path / 'nothing.pth'
  before = sorted(os.listdir(workdir / 'checkpoints')) if workdir.exists() else None
  with pytest.raises(ValueError, match=expected):
    convert.import_torch(config, str(workdir), str(path))
  after = sorted(os.listdir(workdir / 'checkpoints')) if workdir.exists() else None
  assert before == after
