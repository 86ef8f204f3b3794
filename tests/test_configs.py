"""Every config in configs/ passes the checks its run makes before it starts."""

import importlib
import pathlib

import pytest

from helpers import REPO_ROOT

from simsiam_jax import config_validation, methods

CONFIGS = sorted(path.stem for path in (pathlib.Path(REPO_ROOT) / 'configs').glob('*.py')
                 if path.stem not in ('__init__', 'base'))


def test_every_config_file_is_checked():
  assert {'default', 'imagenet', 'imagenet_linear', 'gpu_smoke', 'cifar10_cpu'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_is_valid(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  if config.mode != 'pretrain':  # The checkpoint to evaluate comes from the command line.
    config.pretrained_workdir = '/tmp/pretrained'
  config_validation.validate_mode(config)
  if config.mode == 'linear_eval':
    config_validation.validate_linear_config(config, device_count=1)
  else:
    config_validation.validate_config(config, device_count=1)
    methods.get(config.method).validate(config)


# The accelerator configs augment where it is faster on each platform (README, "Host or
# device augmentation"); the CPU configs where it measured fastest end to end on a 2-core
# CPU (RESULTS.md).
CPU_CONFIGS = {'default': 'host', 'cifar10_cpu': 'host'}


@pytest.mark.parametrize('name', CONFIGS)
def test_where_each_config_augments(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config.data.augment_on == CPU_CONFIGS.get(name, 'auto')
