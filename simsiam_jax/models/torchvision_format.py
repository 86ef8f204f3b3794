"""PyTorch names and layouts of the model's variables: torchvision's ResNet and the official
SimSiam builder (facebookresearch/simsiam, `simsiam/builder.py`).

Pure numpy, no torch: a state dict here is {name: numpy array}. Layouts: a convolution is
OIHW in torch and HWIO in flax, a linear weight [out, in] in torch and [in, out] in flax; a
BatchNorm's weight/bias/running_mean/running_var are scale/bias/mean/var (both keep the
unbiased running variance: see `layers.BatchNorm`).

The official projector is `encoder.fc`, an nn.Sequential of (Linear, BN, ReLU) per hidden
layer and (Linear, BN(affine=False)) at the output; its output Linear has a bias that is
frozen at its random initialisation (`requires_grad = False`) and cancelled by the BN after
it. Ours has no such bias: on import it is folded into that BN's running mean, which gives
the same outputs in both BatchNorm modes.
"""

from typing import Iterator

import numpy as np
from flax import traverse_util

from simsiam_jax.models import resnet


class TorchFormatError(ValueError):
  """A state dict does not fit the model; the message names the key and both shapes."""


CONV, BN, LINEAR = 'conv', 'bn', 'linear'
# A BatchNorm's torch field -> (flax field, collection: parameter or running statistic).
_BN_FIELDS = {'weight': ('scale', 'params'), 'bias': ('bias', 'params'),
              'running_mean': ('mean', 'batch_stats'), 'running_var': ('var', 'batch_stats')}


def backbone_layers(name: str) -> Iterator[tuple[str, str, str]]:
  """(flax module path, torchvision module name, kind) of every layer of a ResNet backbone."""
  stage_sizes, block_cls = resnet.ARCHITECTURES[name]
  yield 'stem_conv', 'conv1', CONV
  yield 'stem_norm', 'bn1', BN
  convs_per_block = 3 if block_cls is resnet.Bottleneck else 2
  block_index = 0
  for stage, num_blocks in enumerate(stage_sizes):
    for block in range(num_blocks):
      flax_block = f'{block_cls.__name__}_{block_index}'
      torch_block = f'layer{stage + 1}.{block}'
      for i in range(convs_per_block):
        yield f'{flax_block}/Conv_{i}', f'{torch_block}.conv{i + 1}', CONV
        yield f'{flax_block}/BatchNorm_{i}', f'{torch_block}.bn{i + 1}', BN
      if block == 0:  # torchvision's _make_layer adds the projection shortcut here.
        yield f'{flax_block}/downsample_conv', f'{torch_block}.downsample.0', CONV
        yield f'{flax_block}/downsample_norm', f'{torch_block}.downsample.1', BN
      block_index += 1


def head_layers(projector_layers: int) -> Iterator[tuple[str, str, str]]:
  """(flax path, official builder name, kind) of the projector (`encoder.fc`) and the
  predictor."""
  for i in range(projector_layers):
    yield f'projector/Dense_{i}', f'encoder.fc.{3 * i}', LINEAR
    yield f'projector/BatchNorm_{i}', f'encoder.fc.{3 * i + 1}', BN
  yield 'predictor/Dense_0', 'predictor.0', LINEAR
  yield 'predictor/BatchNorm_0', 'predictor.1', BN
  yield 'predictor/Dense_1', 'predictor.3', LINEAR


def simsiam_layers(backbone: str, projector_layers: int) -> list[tuple[str, str, str]]:
  """Every layer of the SimSiam model, named as the official builder names them."""
  return [*((f'backbone/{f}', f'encoder.{t}', kind) for f, t, kind in backbone_layers(backbone)),
          *head_layers(projector_layers)]


def _present(flax_params: dict, flax_path: str) -> bool:
  """False for a block's projection shortcut where the block has none."""
  return f'{flax_path}/kernel' in flax_params


def to_torch(variables: dict, layer_list, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} (flax names) -> {torch name: array} for the layers given.

  Layers absent from `variables` (a block without projection shortcut) are skipped, and so
  are the statistics if 'batch_stats' is missing (a tree of gradients).
  """
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  stats = traverse_util.flatten_dict(variables.get('batch_stats', {}), sep='/')
  state = {}
  for flax_path, torch_name, kind in layer_list:
    if kind == CONV:
      if not _present(params, flax_path):
        continue
      state[f'{torch_name}.weight'] = np.transpose(params[f'{flax_path}/kernel'], (3, 2, 0, 1))
    elif kind == LINEAR:
      state[f'{torch_name}.weight'] = np.transpose(params[f'{flax_path}/kernel'])
      if f'{flax_path}/bias' in params:
        state[f'{torch_name}.bias'] = np.asarray(params[f'{flax_path}/bias'])
    else:
      for torch_field, (flax_field, collection) in _BN_FIELDS.items():
        tree = params if collection == 'params' else stats
        if f'{flax_path}/{flax_field}' in tree:
          state[f'{torch_name}.{torch_field}'] = np.asarray(tree[f'{flax_path}/{flax_field}'])
      if f'{flax_path}/mean' in stats:
        state[f'{torch_name}.num_batches_tracked'] = np.asarray(num_batches_tracked, np.int64)
  return {k: np.array(v, order='C') for k, v in state.items()}  # Keeps 0-d arrays 0-d.


def from_torch(state: dict[str, np.ndarray], template: dict, layer_list, *,
               prefix: str = '', source: str = 'the state dict') -> dict:
  """{torch name: array} -> variables shaped like `template` ({'params', 'batch_stats'}),
  for the layers given; `prefix` is prepended to every torch name looked up.

  Raises TorchFormatError naming the first missing key or mismatched shape.
  """
  params = traverse_util.flatten_dict(template['params'], sep='/')
  stats = traverse_util.flatten_dict(template.get('batch_stats', {}), sep='/')
  new_params, new_stats = {}, {}

  def take(torch_key, expected_shape, transpose=None):
    key = prefix + torch_key
    if key not in state:
      raise TorchFormatError(f'{source} has no key {key} (expected shape '
                             f'{_torch_shape(expected_shape, transpose)})')
    value = np.asarray(state[key])
    if transpose is not None:
      value = np.transpose(value, transpose)
    if value.shape != tuple(expected_shape):
      raise TorchFormatError(
          f'{key}: {source} has shape {tuple(np.asarray(state[key]).shape)}, the config\'s '
          f'model needs {_torch_shape(expected_shape, transpose)}')
    return value.astype(np.float32)

  for flax_path, torch_name, kind in layer_list:
    if kind == CONV:
      if not _present(params, flax_path):
        continue
      kernel = params[f'{flax_path}/kernel']
      new_params[f'{flax_path}/kernel'] = take(f'{torch_name}.weight', kernel.shape, (2, 3, 1, 0))
    elif kind == LINEAR:
      kernel = params[f'{flax_path}/kernel']
      new_params[f'{flax_path}/kernel'] = take(f'{torch_name}.weight', kernel.shape, (1, 0))
      if f'{flax_path}/bias' in params:
        new_params[f'{flax_path}/bias'] = take(f'{torch_name}.bias',
                                               params[f'{flax_path}/bias'].shape)
    else:
      for torch_field, (flax_field, collection) in _BN_FIELDS.items():
        tree, new_tree = (params, new_params) if collection == 'params' else (stats, new_stats)
        if f'{flax_path}/{flax_field}' in tree:
          new_tree[f'{flax_path}/{flax_field}'] = take(f'{torch_name}.{torch_field}',
                                                       tree[f'{flax_path}/{flax_field}'].shape)
  return {'params': traverse_util.unflatten_dict(new_params, sep='/'),
          'batch_stats': traverse_util.unflatten_dict(new_stats, sep='/')}


def _torch_shape(flax_shape, transpose):
  """The torch layout of a flax shape, as plain ints (as torch prints shapes)."""
  if transpose is not None:
    flax_shape = np.asarray(flax_shape)[np.argsort(transpose)]
  return tuple(int(d) for d in flax_shape)


def fold_frozen_projector_bias(state: dict[str, np.ndarray], projector_layers: int,
                               prefix: str) -> dict[str, np.ndarray]:
  """The official projector's frozen output bias b folded into the running mean of the BN
  after it: BN(Wx + b) uses mean m, so BN(Wx) must use m - b (the batch mean in train mode
  drops b by itself)."""
  output = 3 * (projector_layers - 1)
  linear, norm = f'{prefix}encoder.fc.{output}', f'{prefix}encoder.fc.{output + 1}'
  if f'{linear}.bias' not in state:
    return state
  state = dict(state)
  state[f'{norm}.running_mean'] = (np.asarray(state[f'{norm}.running_mean'])
                                   - np.asarray(state.pop(f'{linear}.bias')))
  return state


def to_detectron2(torchvision_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """torchvision ResNet names -> detectron2's, the renaming of MoCo's
  detection/convert-pretrained-to-detectron2.py (stem, res2..res5, convN.norm, shortcut)."""
  renamed = {}
  for key, value in torchvision_state.items():
    new = key if 'layer' in key else f'stem.{key}'
    for t in (1, 2, 3, 4):
      new = new.replace(f'layer{t}', f'res{t + 1}')
    for t in (1, 2, 3):
      new = new.replace(f'bn{t}', f'conv{t}.norm')
    new = new.replace('downsample.0', 'shortcut').replace('downsample.1', 'shortcut.norm')
    renamed[new] = value
  return renamed
