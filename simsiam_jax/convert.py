"""Weights in and out of PyTorch formats (needs torch: `pip install .[torch]`).

  # A PyTorch checkpoint -> DIR/checkpoints, which knn, linear_eval and pretraining read:
  python -m simsiam_jax.convert --config=CONFIG --workdir=DIR --import_torch=FILE
  # The backbone of DIR's latest checkpoint -> torchvision, or detectron2 (as MoCo converts):
  python -m simsiam_jax.convert --config=CONFIG --workdir=DIR --export_torchvision=OUT.pth
  python -m simsiam_jax.convert --config=CONFIG --workdir=DIR --export_detectron2=OUT.pkl

Imported formats, recognised by their keys (the architecture comes from CONFIG):
- official SimSiam pretraining (`checkpoint_0099.pth.tar`): `module.encoder.*` (backbone and
  projector `encoder.fc.*`) and `module.predictor.*`; the whole model, the step (`epoch` x
  steps per epoch of CONFIG's data) and, when present, the SGD momentum buffers, so that
  pretraining resumes where the official run stopped;
- official linear evaluation (`module.*` with the classifier `module.fc.*`, which is
  ignored), MoCo v2 (`module.encoder_q.*`, its MLP head ignored) and a plain torchvision
  ResNet state dict: the backbone only; the heads start from CONFIG's initialisation, step 0.
Any missing key or shape mismatch is one `error:` line naming the key and both shapes, and
nothing is written.
"""

import os
import pickle
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from simsiam_jax import cli

# Before the modules below load TensorFlow: its C++ start-up notices stay out of the log.
cli.import_tensorflow_quietly()

from simsiam_jax import checkpointing, config_validation, sharding  # pylint: disable=wrong-import-position
from simsiam_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position
from simsiam_jax.data import input_pipeline  # pylint: disable=wrong-import-position
from simsiam_jax.evaluation import features  # pylint: disable=wrong-import-position
from simsiam_jax.methods import simsiam  # pylint: disable=wrong-import-position
from simsiam_jax.models import torchvision_format  # pylint: disable=wrong-import-position
from simsiam_jax.train_state import TrainState  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags; defined only when this module runs as the program, since the
  other tools define --config and --workdir too."""
  flags.DEFINE_string('workdir', None, 'Workdir whose checkpoints are written (import) or '
                      'read (export).')
  flags.DEFINE_string('import_torch', None, 'PyTorch checkpoint to import into --workdir.')
  flags.DEFINE_string('export_torchvision', None, 'Write the backbone as a torchvision ResNet '
                      'state dict (.pth).')
  flags.DEFINE_string('export_detectron2', None, 'Write the backbone in detectron2 format '
                      '(.pkl).')
  config_flags.DEFINE_config_file('config', None, 'Config describing the model.',
                                  lock_config=True)

# Format name -> (prefix of the backbone's torchvision names, whole SimSiam model or not).
FORMATS = {
    'simsiam': ('module.encoder.', True),
    'simsiam_unwrapped': ('encoder.', True),
    'moco': ('module.encoder_q.', False),
    'simsiam_linear': ('module.', False),
    'torchvision': ('', False),
}
_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise config_validation.ConfigError(
        'converting PyTorch checkpoints needs torch: pip install ".[torch]"') from e
  return torch


def load_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """(state dict as numpy, the rest of the checkpoint: epoch, optimizer, ...)."""
  torch = _torch()
  if not os.path.isfile(path):
    raise checkpointing.CheckpointError(f'--import_torch: no file at {path}')
  try:
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise checkpointing.CheckpointError(
        f'--import_torch: {path} is not a readable PyTorch checkpoint '
        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from e
  if not isinstance(checkpoint, dict):
    raise checkpointing.CheckpointError(f'--import_torch: {path} holds a '
                                        f'{type(checkpoint).__name__}, not a state dict')
  state = checkpoint.get('state_dict', checkpoint)
  rest = {k: v for k, v in checkpoint.items() if k != 'state_dict'} if 'state_dict' in (
      checkpoint) else {}
  return {k: v.detach().cpu().numpy() for k, v in state.items()
          if isinstance(v, torch.Tensor)}, rest


def detect_format(state: dict[str, np.ndarray], path: str) -> str:
  for name, (prefix, whole_model) in FORMATS.items():
    if f'{prefix}conv1.weight' not in state:
      continue
    if whole_model and not any(k.startswith(prefix.replace('encoder.', 'predictor.'))
                               for k in state):
      continue
    return name
  examples = ', '.join(list(state)[:4])
  raise checkpointing.CheckpointError(
      f'--import_torch: {path} is not a known format (keys {examples}, ...); expected an '
      'official SimSiam, SimSiam linear-eval or MoCo checkpoint, or a torchvision ResNet')


def _initial_train_state(config, steps_per_epoch, mesh) -> TrainState:
  # A plain SimSiam state ('online' targets, checked above): no per-image arrays.
  return simsiam.create_train_state(jax.random.key(config.seed), config,
                                    simsiam.create_optimizer(config, steps_per_epoch), mesh,
                                    num_train_examples=0)


def momentum_buffers(state: dict[str, np.ndarray], optimizer_state: dict,
                     prefix: str) -> dict[str, np.ndarray]:
  """{torch parameter name: SGD momentum buffer} of an official checkpoint's optimizer.

  torch numbers parameters in the order of the param groups, which the official code builds
  from encoder.parameters() then predictor.parameters(): the state dict's order of the
  parameters (not the buffers) under `prefix`.
  """
  names = [k for k in state if k.startswith(prefix) and not k.endswith(_BUFFERS)]
  indices = [i for group in optimizer_state['param_groups'] for i in group['params']]
  buffers = {}
  for index, name in zip(indices, names):
    entry = optimizer_state['state'].get(index, {})
    if 'momentum_buffer' in entry:
      buffers[name] = np.asarray(entry['momentum_buffer'].detach().cpu().numpy())
  return buffers


def _with_momentum(opt_state, momentum: dict, step: int):
  """`opt_state` of our SGD with its traces replaced by `momentum` (a params-shaped tree)
  and every schedule count set to `step`."""

  def replace(node):
    if isinstance(node, optax.TraceState):
      trace = jax.tree.map(lambda old, new: old if isinstance(old, optax.MaskedNode) else
                           jax.device_put(new, old.sharding), node.trace, momentum,
                           is_leaf=lambda x: isinstance(x, optax.MaskedNode))
      return node._replace(trace=trace)
    if isinstance(node, optax.ScaleByScheduleState):
      return node._replace(count=jax.device_put(np.int32(step), node.count.sharding))
    return node

  return jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(
      x, (optax.TraceState, optax.ScaleByScheduleState)))


def _whole_model(state_dict, rest, variables, config, prefix, path):
  """(variables, momentum tree or None) from an official SimSiam checkpoint."""
  layers = torchvision_format.simsiam_layers(config.model.name, config.model.projector_layers)
  # Indexed by the parameters of the unfolded model, the frozen bias included.
  buffers = (momentum_buffers(state_dict, rest['optimizer'], prefix)
             if 'optimizer' in rest else None)
  state_dict = torchvision_format.fold_frozen_projector_bias(
      state_dict, config.model.projector_layers, prefix)
  imported = torchvision_format.from_torch(state_dict, variables, layers, prefix=prefix,
                                           source=path)
  if buffers is None:
    return imported, None
  # A parameter without a buffer (never updated) has momentum 0, as in torch.
  zeros = {k: np.zeros_like(v) for k, v in state_dict.items() if k.startswith(prefix)}
  momentum = torchvision_format.from_torch(
      {**zeros, **buffers}, {'params': variables['params']}, layers, prefix=prefix,
      source=f'{path} (momentum buffers)')['params']
  return imported, momentum


def _backbone_only(state_dict, variables, config, prefix, path):
  """`variables` with the backbone replaced by the state dict's."""
  backbone = features.backbone_variables(**variables)
  imported = torchvision_format.from_torch(
      state_dict, backbone, torchvision_format.backbone_layers(config.model.name),
      prefix=prefix, source=path)
  return {c: {**variables[c], 'backbone': imported[c]} for c in variables}


def import_torch(config: ml_collections.ConfigDict, workdir: str, path: str) -> dict[str, Any]:
  """Writes the checkpoint at `path` as step N of `workdir`; returns what was imported."""
  workdir_lib.validate(workdir)
  if checkpointing.checkpoint_dir(workdir).exists() and any(
      checkpointing.checkpoint_dir(workdir).iterdir()):
    raise checkpointing.CheckpointError(
        f'--workdir: {checkpointing.checkpoint_dir(workdir)} already has checkpoints; import '
        'into a new workdir')
  config_validation.validate_config(config, device_count=jax.device_count(),
                                    process_count=jax.process_count())
  # The imported weights start a plain SimSiam run with SGD: a target network or memory bank
  # would have to be made from them, which the official checkpoints do not hold.
  for field in ('method', 'simsiam.target', 'optim.optimizer'):
    value = checkpointing.STATE_FIELDS[field]
    config_validation.require(config_validation.get_field(config, field) == value,
                              f'config.{field}', config_validation.get_field(config, field),
                              f'imports start a {value!r} run')
  state_dict, rest = load_torch_checkpoint(path)
  source = detect_format(state_dict, path)
  prefix, whole_model = FORMATS[source]
  if whole_model and (config.model.head_batch_norm != 'default' or
                      config.model.predictor != 'mlp'):
    raise config_validation.ConfigError(
        'config.model: the official SimSiam layout needs head_batch_norm=default and '
        f'predictor=mlp, not {config.model.head_batch_norm}/{config.model.predictor}')
  # Only the step of a whole official checkpoint depends on the data (epoch x steps per
  # epoch); the optimizer state's structure does not, so backbone imports need no dataset,
  # and a config that declares its training-set size (ImageNet's) needs none either.
  steps_per_epoch = (input_pipeline.steps_per_epoch(
      input_pipeline.declared_pretrain_examples(config), config.batch_size)
                     if whole_model and 'epoch' in rest else 1)
  mesh = sharding.create_mesh()
  state = _initial_train_state(config, steps_per_epoch, mesh)
  variables = {'params': jax.device_get(state.params),
               'batch_stats': jax.device_get(state.batch_stats)}
  if whole_model:
    imported, momentum = _whole_model(state_dict, rest, variables, config,
                                      prefix[:-len('encoder.')], path)
    step = int(rest.get('epoch', 0)) * steps_per_epoch
    if momentum is not None:
      state = state.replace(opt_state=_with_momentum(state.opt_state, momentum, step))
  else:
    imported, momentum, step = _backbone_only(state_dict, variables, config, prefix, path), None, 0
  replicated = sharding.replicated(mesh)
  state = state.replace(step=jax.device_put(np.int32(step), replicated),
                        params=jax.device_put(imported['params'], replicated),
                        batch_stats=jax.device_put(imported['batch_stats'], replicated))
  with checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                  save_every_steps=config.checkpoint_every_steps) as ckpt:
    ckpt.save(step, state, config, force=True)
  logging.info('Imported %s (%s format%s) as step %d of %s.', path, source,
               ', momentum buffers included' if momentum is not None else '',
               step, checkpointing.checkpoint_dir(workdir))
  return {'format': source, 'step': step, 'whole_model': whole_model}


def export_backbone(config: ml_collections.ConfigDict, workdir: str) -> dict[str, np.ndarray]:
  """The backbone of `workdir`'s latest checkpoint as a torchvision ResNet state dict."""
  variables, stored_config = checkpointing.restore_pretrained_variables(workdir, config)
  backbone = features.backbone_variables(**variables)
  return torchvision_format.to_torch(
      backbone, torchvision_format.backbone_layers(stored_config.model.name))


def export_torchvision(config: ml_collections.ConfigDict, workdir: str, path: str):
  """Loads into torchvision's resnet with strict=False, only fc.* missing."""
  torch = _torch()
  state = export_backbone(config, workdir)
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  logging.info('Wrote the torchvision backbone of %s to %s (%d tensors).', workdir, path,
               len(state))


def export_detectron2(config: ml_collections.ConfigDict, workdir: str, path: str):
  """What MoCo's detection/convert-pretrained-to-detectron2.py writes: detectron2 names,
  numpy arrays, matching_heuristics on."""
  state = torchvision_format.to_detectron2(export_backbone(config, workdir))
  with open(path, 'wb') as f:
    pickle.dump({'model': state, '__author__': 'simsiam_jax', 'matching_heuristics': True}, f)
  logging.info('Wrote the detectron2 backbone of %s to %s (%d tensors).', workdir, path,
               len(state))


def main(argv):
  cli.quiet_library_output()
  with cli.exit_on_error():
    cli.check_no_arguments(argv)
    actions = [name for name in ('import_torch', 'export_torchvision', 'export_detectron2')
               if FLAGS[name].value]
    if len(actions) != 1:
      raise app.UsageError('give exactly one of --import_torch, --export_torchvision, '
                           '--export_detectron2')
    if FLAGS.config is None or not FLAGS.workdir:
      raise app.UsageError('--config and --workdir are required')
    action, = actions
    {'import_torch': import_torch, 'export_torchvision': export_torchvision,
     'export_detectron2': export_detectron2}[action](FLAGS.config, FLAGS.workdir,
                                                     FLAGS[action].value)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
