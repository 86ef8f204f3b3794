"""Checks a config before any work starts, so a mistake costs seconds, not a pod-hour.

Each failure is a `ConfigError` whose message names the offending field; `main` prints it
as one line and exits non-zero.
"""

import os

import ml_collections

from simsiam_jax import augmentations, losses, optimizer
from simsiam_jax.models import heads, resnet, simsiam


class ConfigError(ValueError):
  """A config field or flag has a value the trainer cannot use."""


def _require(condition: bool, field: str, value, requirement: str):
  if not condition:
    raise ConfigError(f'{field}={value!r}: {requirement}')


def _get(config: ml_collections.ConfigDict, field: str):
  value = config
  for key in field.split('.'):
    value = value[key]
  return value


def _require_positive(config: ml_collections.ConfigDict, field: str):
  value = _get(config, field)
  _require(isinstance(value, (int, float)) and value > 0, f'config.{field}', value,
           'must be a positive number')


def _require_divisible(config: ml_collections.ConfigDict, field: str, device_count: int,
                       process_count: int):
  value = _get(config, field)
  _require(value % device_count == 0, f'config.{field}', value,
           f'must be divisible by the number of devices ({device_count})')
  _require(value % process_count == 0, f'config.{field}', value,
           f'must be divisible by the number of processes ({process_count})')


def _require_known_model(config: ml_collections.ConfigDict):
  _require(config.model.name in resnet.BACKBONE_NAMES, 'config.model.name', config.model.name,
           f'unknown model; choose one of {", ".join(resnet.BACKBONE_NAMES)}')


def validate_config(config: ml_collections.ConfigDict, *, device_count: int,
                    process_count: int = 1):
  for field in ('batch_size', 'num_epochs', 'base_lr', 'log_every_steps', 'model.width',
                'model.projector_layers', 'model.projector_hidden_dim',
                'model.projector_dim', 'model.predictor_hidden_dim', 'data.image_size',
                'checkpoint_every_steps', 'keep_checkpoints', 'knn.k', 'knn.temperature'):
    _require_positive(config, field)
  _require_known_model(config)
  _require_divisible(config, 'batch_size', device_count, process_count)
  for field, choices in (('model.predictor', simsiam.PREDICTORS),
                         ('model.head_batch_norm', tuple(heads.HEAD_BATCH_NORM)),
                         ('similarity', tuple(losses.SIMILARITIES)),
                         ('loss_symmetry', losses.SYMMETRIES),
                         ('lr_schedule', optimizer.LR_SCHEDULES),
                         ('data.jpeg_dct_method', augmentations.JPEG_DCT_METHODS)):
    _require(_get(config, field) in choices, f'config.{field}', _get(config, field),
             f'choose one of {", ".join(choices)}')
  _require(config.weight_decay >= 0, 'config.weight_decay', config.weight_decay,
           'must be >= 0')
  _require(0 <= config.momentum < 1, 'config.momentum', config.momentum, 'must be in [0, 1)')
  _require(config.knn.every_epochs >= 0, 'config.knn.every_epochs', config.knn.every_epochs,
           'must be >= 0 (0: only at the end)')
  _require(0 <= config.warmup_epochs < config.num_epochs, 'config.warmup_epochs',
           config.warmup_epochs, f'must be in [0, num_epochs={config.num_epochs})')


MODES = ('pretrain', 'linear_eval', 'knn')


def validate_mode(config: ml_collections.ConfigDict):
  _require(config.mode in MODES, 'config.mode', config.mode, f'choose one of {", ".join(MODES)}')
  if config.mode != 'pretrain':
    _require(bool(config.pretrained_workdir), 'config.pretrained_workdir',
             config.pretrained_workdir, f'is required when config.mode={config.mode!r}')


def validate_linear_config(config: ml_collections.ConfigDict, *, device_count: int,
                           process_count: int = 1):
  for field in ('linear.batch_size', 'linear.num_epochs', 'linear.base_lr',
                'linear.log_every_steps', 'data.image_size'):
    _require_positive(config, field)
  _require_known_model(config)
  _require(config.linear.lr_schedule in optimizer.LR_SCHEDULES, 'config.linear.lr_schedule',
           config.linear.lr_schedule, f'choose one of {", ".join(optimizer.LR_SCHEDULES)}')
  _require(config.linear.eval_every_epochs >= 0, 'config.linear.eval_every_epochs',
           config.linear.eval_every_epochs, 'must be >= 0 (0: only at the end)')
  for batch_field in ('batch_size', 'linear.batch_size'):
    _require_divisible(config, batch_field, device_count, process_count)


def validate_workdir(workdir: str | None):
  _require(bool(workdir), '--workdir', workdir, 'is required')
  parent = os.path.dirname(os.path.abspath(workdir))
  # Remote file systems (gs://) have no local parent to check.
  if '://' not in workdir:
    _require(os.path.isdir(parent), '--workdir', workdir,
             f'parent directory {parent} does not exist')
