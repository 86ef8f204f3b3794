"""Checks a config before any work starts, so a mistake costs seconds, not a pod-hour.

Each failure is a `ConfigError` whose message names the offending field; `main` prints it
as one line and exits non-zero.
"""

import ml_collections

from simsiam_jax import losses, optimizer
from simsiam_jax import data
from simsiam_jax.models import heads, resnet, simsiam


class ConfigError(ValueError):
  """A config field or flag has a value the trainer cannot use."""


def require(condition: bool, field: str, value, requirement: str):
  if not condition:
    raise ConfigError(f'{field}={value!r}: {requirement}')


def get_field(config: ml_collections.ConfigDict, field: str):
  value = config
  for key in field.split('.'):
    value = value[key]
  return value


def require_positive(config: ml_collections.ConfigDict, field: str):
  value = get_field(config, field)
  require(isinstance(value, (int, float)) and value > 0, f'config.{field}', value,
          'must be a positive number')


def _require_divisible(config: ml_collections.ConfigDict, field: str, device_count: int,
                       process_count: int):
  value = get_field(config, field)
  require(value % device_count == 0, f'config.{field}', value,
          f'must be divisible by the number of devices ({device_count})')
  require(value % process_count == 0, f'config.{field}', value,
          f'must be divisible by the number of processes ({process_count})')


def require_choice(config: ml_collections.ConfigDict, field: str, choices):
  value = get_field(config, field)
  require(value in choices, f'config.{field}', value, f'choose one of {", ".join(choices)}')


def require_positive_int(config: ml_collections.ConfigDict, field: str):
  value = get_field(config, field)
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
          f'config.{field}', value, 'must be a positive integer')


def _require_known_model(config: ml_collections.ConfigDict):
  require(config.model.name in resnet.BACKBONE_NAMES, 'config.model.name', config.model.name,
          f'unknown model; choose one of {", ".join(resnet.BACKBONE_NAMES)}')


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_in(config: ml_collections.ConfigDict, field: str, low: float, high: float, *,
               low_open: bool = False):
  value = get_field(config, field)
  inside = _is_number(value) and (low < value if low_open else low <= value) and value <= high
  require(inside, f'config.{field}', value,
          f'must be a number in {"(" if low_open else "["}{low:g}, {high:g}]')


def require_momentum(config: ml_collections.ConfigDict, field: str):
  value = get_field(config, field)
  require(_is_number(value) and 0 <= value < 1, f'config.{field}', value, 'must be in [0, 1)')


def _require_every_epochs(config: ml_collections.ConfigDict, field: str):
  """An evaluation period in epochs, where 0 means only at the end."""
  value = get_field(config, field)
  require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
          f'config.{field}', value, 'must be an integer >= 0 (0: only at the end)')


def _require_range(config: ml_collections.ConfigDict, field: str, high: float | None = None):
  """A (low, high) pair with 0 < low <= high (<= `high`)."""
  value = get_field(config, field)
  ok = (isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_number, value))
        and 0 < value[0] <= value[1] and (high is None or value[1] <= high))
  bound = f' <= {high:g}' if high is not None else ''
  require(ok, f'config.{field}', value, f'must be a pair (low, high) with 0 < low <= high{bound}')


def _require_valid_augmentations(config: ml_collections.ConfigDict):
  require_choice(config, 'data.augment_on', data.AUGMENT_ON)
  _require_range(config, 'aug.crop_scale', high=1)
  _require_range(config, 'aug.crop_ratio')
  _require_range(config, 'aug.blur_sigma')
  for field in ('aug.brightness', 'aug.contrast', 'aug.saturation'):
    require_in(config, field, 0, float('inf'))
  # torchvision's ColorJitter: a hue shift beyond half the color wheel is no larger shift.
  require_in(config, 'aug.hue', 0, 0.5)
  for field in ('aug.color_jitter_prob', 'aug.grayscale_prob', 'aug.blur_prob',
                'aug.flip_prob'):
    require_in(config, field, 0, 1)
  require_in(config, 'aug.blur_kernel_fraction', 0, 1, low_open=True)


def _require_image_size_fits_the_stem(config: ml_collections.ConfigDict):
  """Images smaller than the backbone's total stride reach the last stage as one pixel (or
  less), which trains and evaluates without an error but on nothing."""
  stride = resnet.total_stride(config.model.cifar_stem)
  hint = '' if config.model.cifar_stem else '; set config.model.cifar_stem=True for small images'
  require(config.data.image_size >= stride, 'config.data.image_size', config.data.image_size,
          f'must be at least {stride}, the total stride of the '
          f'{"CIFAR" if config.model.cifar_stem else "ImageNet"} stem network{hint}')


def _require_valid_data(config: ml_collections.ConfigDict):
  require_positive(config, 'data.image_size')
  require(isinstance(config.data.image_size, int), 'config.data.image_size',
          config.data.image_size, 'must be an integer')
  _require_image_size_fits_the_stem(config)
  require_in(config, 'data.eval_crop_fraction', 0, 1, low_open=True)
  for field in ('data.mean', 'data.std'):
    value = get_field(config, field)
    require(isinstance(value, (tuple, list)) and len(value) == 3
            and all(map(_is_number, value)), f'config.{field}', value,
            'must be three numbers (R, G, B)')
  require(all(v > 0 for v in config.data.std), 'config.data.std', config.data.std,
          'must be positive')
  require(config.data.jpeg_dct_method in data.JPEG_DCT_METHODS,
          'config.data.jpeg_dct_method', config.data.jpeg_dct_method,
          f'choose one of {", ".join(data.JPEG_DCT_METHODS)}')


def _require_valid_evals(config: ml_collections.ConfigDict):
  """The fields of config.evals; evaluators.create_evaluators checks the names."""
  for name in config.evals:
    _require_every_epochs(config, f'evals.{name}.every_epochs')
  if 'knn' in config.evals:
    require_positive_int(config, 'evals.knn.k')
    require_positive(config, 'evals.knn.temperature')


def validate_config(config: ml_collections.ConfigDict, *, device_count: int,
                    process_count: int = 1):
  """Every field pretraining and the kNN monitor read; raises ConfigError on the first bad one."""
  for field in ('batch_size', 'num_epochs', 'optim.base_lr', 'log_every_steps', 'model.width',
                'model.projector_layers', 'model.projector_hidden_dim',
                'model.projector_dim', 'model.predictor_hidden_dim',
                'checkpoint_every_steps', 'keep_checkpoints'):
    require_positive(config, field)
  _require_known_model(config)
  _require_divisible(config, 'batch_size', device_count, process_count)
  for field, choices in (('model.predictor', simsiam.PREDICTORS),
                         ('model.head_batch_norm', tuple(heads.HEAD_BATCH_NORM)),
                         ('model.remat', resnet.REMAT_POLICIES),
                         ('similarity', tuple(losses.SIMILARITIES)),
                         ('loss_symmetry', losses.SYMMETRIES),
                         ('optim.lr_schedule', optimizer.LR_SCHEDULES),
                         ('optim.optimizer', optimizer.OPTIMIZERS)):
    require_choice(config, field, choices)
  require_in(config, 'optim.weight_decay', 0, float('inf'))
  require_positive(config, 'optim.lars_trust_coefficient')
  require_momentum(config, 'optim.momentum')
  warmup = config.optim.warmup_epochs
  require(_is_number(warmup) and 0 <= warmup < config.num_epochs,
          'config.optim.warmup_epochs', config.optim.warmup_epochs,
          f'must be in [0, num_epochs={config.num_epochs})')
  require_in(config, 'collapse_warning_fraction', 0, 1)
  _require_valid_data(config)
  _require_valid_augmentations(config)
  _require_valid_evals(config)


FEATURE_DTYPES = ('float32', 'bfloat16')
MODES = ('pretrain', 'linear_eval', 'knn')


def validate_mode(config: ml_collections.ConfigDict):
  require(config.mode in MODES, 'config.mode', config.mode, f'choose one of {", ".join(MODES)}')
  require(isinstance(config.dry_run, bool), 'config.dry_run', config.dry_run,
          'must be True or False')
  require(not config.dry_run or config.mode == 'pretrain', 'config.dry_run', config.dry_run,
          f'plans pretraining; it cannot be combined with config.mode={config.mode!r}')
  if config.mode != 'pretrain':
    require(bool(config.pretrained_workdir), 'config.pretrained_workdir',
            config.pretrained_workdir, f'is required when config.mode={config.mode!r}')


def validate_linear_config(config: ml_collections.ConfigDict, *, device_count: int,
                           process_count: int = 1):
  """Every field linear evaluation reads; raises ConfigError on the first bad one."""
  for field in ('linear.batch_size', 'linear.num_epochs', 'linear.base_lr',
                'linear.log_every_steps', 'linear.checkpoint_every_steps'):
    require_positive(config, field)
  _require_known_model(config)
  _require_valid_data(config)
  require(config.linear.lr_schedule in optimizer.LR_SCHEDULES, 'config.linear.lr_schedule',
          config.linear.lr_schedule, f'choose one of {", ".join(optimizer.LR_SCHEDULES)}')
  _require_every_epochs(config, 'linear.eval_every_epochs')
  require_momentum(config, 'linear.momentum')
  require_in(config, 'linear.weight_decay', 0, float('inf'))
  _require_range(config, 'linear.crop_scale', high=1)
  require_choice(config, 'linear.feature_dtype', FEATURE_DTYPES)
  for batch_field in ('batch_size', 'linear.batch_size'):
    _require_divisible(config, batch_field, device_count, process_count)
