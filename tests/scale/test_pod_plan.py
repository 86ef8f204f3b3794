"""--config.dry_run=True: the compile-only plan of the ImageNet run on TPU slices."""

import json

import pytest

from helpers import run_main

from configs import imagenet
from simsiam_jax import config_validation
from simsiam_jax.scale import pod_plan
from simsiam_jax.config_validation import ConfigError

# SimSiam's ResNet-50 with the official heads: backbone, projector and predictor
# (tests/models/test_models.py derives each count).
RESNET50_SIMSIAM_PARAMS = 23_508_032 + 12_591_104 + 2_100_224


def test_dry_run_plans_resnet50_at_224px_on_8_fake_devices(tmp_path):
  workdir = tmp_path / 'plan'
  result = run_main('--config=configs/imagenet.py', f'--workdir={workdir}',
                    '--config.dry_run=True', '--config.pod_plan.slices=v5e-8')
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = json.loads((workdir / 'pod_plan.json').read_text())
  assert (row['slice'], row['chips'], row['batch_per_chip'], row['dtype']) == (
      'v5e-8', 8, 64, 'bfloat16')
  # About 49 GFLOP per image (two views, forward and backward of ResNet-50 at 224 px: 4.1
  # GMAC = 8.2 GFLOP forward, backward twice that): 64 images on each chip.
  assert row['gflop_per_chip_step'] == pytest.approx(64 * 2 * 3 * 8.2, rel=0.1)
  # The float32 gradients of every parameter are all-reduced once per view (the CPU
  # compiler does not merge the two encoder calls' sums); the BN statistics add a few kB.
  gradient_mib = RESNET50_SIMSIAM_PARAMS * 4 / 2**20
  assert row['gradient_mib'] == pytest.approx(gradient_mib)
  assert 2 * gradient_mib <= row['collectives']['all-reduce']['mib'] < 2.05 * gradient_mib
  memory = row['memory_mib_per_chip']
  assert memory['arguments'] > 2 * gradient_mib  # Parameters, momentum, the batch.
  assert memory['temporaries'] > 0
  # The estimate is the stated sum: compute at the assumed MFU, then the ring all-reduce.
  compute_ms = row['gflop_per_chip_step'] * 1e9 / (197e12 * 0.4) * 1e3
  assert row['compute_ms'] == pytest.approx(compute_ms)
  bytes_sent = sum(2 * 7 / 8 * c['mib'] * 2**20 for op, c in row['collectives'].items()
                   if op == 'all-reduce')
  assert row['communication_ms'] >= bytes_sent / 200e9 * 1e3 * 0.999
  assert row['step_ms'] == pytest.approx(row['compute_ms'] + row['communication_ms'])
  assert row['images_per_second'] == pytest.approx(512 / row['step_ms'] * 1e3)
  assert '| v5e-8 | 8 | 64 |' in result.stdout
  assert 'nothing was trained' in result.stdout
  assert not (workdir / 'checkpoints').exists()


def test_collectives_and_their_bytes_are_read_from_compiled_hlo():
  hlo = '\n'.join([
      '  %all-reduce.1 = f32[3,3,64,64]{3,2,1,0} all-reduce(f32[3,3,64,64]{3,2,1,0} %g), '
      'replica_groups={}, to_apply=%add',
      '  %ar = (f32[10]{0}, /*index=1*/bf16[4,2]{1,0}) all-reduce(%a, %b), to_apply=%add',
      '  %ag = f32[16,8]{1,0} all-gather-start(f32[2,8]{1,0} %x), dimensions={0}',
      '  %add.3 = f32[10]{0} add(f32[10]{0} %a, f32[10]{0} %b)',
  ])
  assert pod_plan.collectives(hlo) == [('all-reduce', 3 * 3 * 64 * 64 * 4),
                                       ('all-reduce', 10 * 4 + 8 * 2),
                                       ('all-gather', 16 * 8 * 4)]


@pytest.mark.parametrize('name,chips', [('v4-8', 4), ('v4-32', 16), ('v5e-64', 64),
                                        ('v5litepod-16', 16), ('v5p-128', 64)])
def test_slice_names_give_their_chips(name, chips):
  assert pod_plan.parse_slice(name)[1] == chips


@pytest.mark.parametrize('name', ['v3-8', 'v4', 'tpu-8', 'v4-7'])
def test_bad_slice_names_are_refused(name):
  with pytest.raises(ConfigError, match='config.pod_plan.slices'):
    pod_plan.parse_slice(name)


def test_a_dry_run_of_an_evaluation_mode_is_refused():
  config = imagenet.get_config()
  config.dry_run, config.mode, config.pretrained_workdir = True, 'knn', '/tmp/pretrained'
  with pytest.raises(ConfigError, match='config.dry_run'):
    config_validation.validate_mode(config)


@pytest.mark.parametrize('field,value', [('assumed_mfu', 1.5), ('num_examples', 0),
                                         ('slices', ' , ')])
def test_bad_plan_settings_are_refused_before_compiling(tmp_path, field, value):
  config = imagenet.get_config()
  config.pod_plan[field] = value
  with pytest.raises(ConfigError, match='config.pod_plan'):
    pod_plan.run(config, str(tmp_path))
