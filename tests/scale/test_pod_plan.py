"""--config.dry_run=True: the compile-only plan of a run on TPU slices, by the TPU compiler
(libtpu, which CI installs), and on H100 hosts, by XLA's GPU compiler (jax's CUDA plugin,
which CI does not install: those tests skip there), or by the CPU compiler on fake
devices."""

import json

import jax
import jax.numpy as jnp
import pytest

from helpers import make_tiny_config, run_main

from configs import imagenet
from simsiam_jax import config_validation
from simsiam_jax.config_validation import ConfigError
from simsiam_jax.models import create_model
from simsiam_jax.scale import hardware, pod_plan

needs_libtpu = pytest.mark.skipif(not pod_plan.tpu_compiler_installed(),
                                  reason='libtpu is not installed: pip install ".[tpu]"')
needs_cuda_plugin = pytest.mark.skipif(
    not pod_plan.gpu_compiler_installed(),
    reason='jax\'s CUDA plugin is not installed: pip install ".[cuda-plan]"')


def tiny_plan_config(slices: str, compiler: str = 'native'):
  config = make_tiny_config()
  config.pod_plan.slices, config.pod_plan.compiler = slices, compiler
  config.pod_plan.num_examples = 1024
  return config


@needs_libtpu
@pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache')
def test_the_tpu_compiler_plans_a_tiny_step_on_a_v4_slice(tmp_path):
  config = tiny_plan_config('v4-8')
  config.batch_size = 32
  config.data.augment_on = 'device'
  (row,) = pod_plan.run(config, str(tmp_path))['rows']
  assert (row['slice'], row['topology'], row['chips'], row['compiler']) == (
      'v4-8', 'v4:2x2x1', 4, 'TPU (libtpu)')
  assert row['fits'] and row['batch_per_chip'] == row['planned_batch_per_chip'] == 8
  hbm = row['hbm_gib']
  assert hbm['arguments'] > 0 and hbm['generated_code'] > 0 and 0 < hbm['total'] < 1
  assert row['chip_hbm_gib'] == 32
  assert row['gflop_per_chip'] > 0 and row['gb_accessed_per_chip'] > 0
  assert row['bound'] in ('compute', 'memory') and 0 < row['mfu_ceiling'] <= 1
  assert row['collectives'][pod_plan.GRADIENTS]['all-reduce']['count'] >= 1
  assert row['step_ms'] == pytest.approx(
      max(row['compute_ms'], row['memory_ms']) + row['communication_bandwidth_ms'] +
      row['communication_latency_ms'])
  # The augmentation alone, a part of the step.
  augmentation = row['device_augmentation']
  assert 0 < augmentation['gb_accessed_per_chip'] < row['gb_accessed_per_chip']
  assert 0 < augmentation['gflop_per_chip'] < row['gflop_per_chip']
  assert augmentation['share_of_step_bytes'] == pytest.approx(
      augmentation['gb_accessed_per_chip'] / row['gb_accessed_per_chip'])
  assert 'v4-8: of the step, the device augmentation' in pod_plan.format_table([row])
  assert json.loads((tmp_path / 'pod_plan.json').read_text()) == [row]


@needs_libtpu
@pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache')
def test_a_batch_too_large_for_the_chip_is_a_row_with_the_batch_that_fits(tmp_path,
                                                                        monkeypatch):
  """No traceback: the row says it does not fit, with the largest power-of-two batch per
  chip that does (and with remat), found by compiling. The batch is sharded one shard per
  chip of the slice's topology."""
  config = tiny_plan_config('v5e-4')
  config.batch_size = 128
  config.data.augment_on = 'auto'  # On a TPU: host mode.
  slice_ = pod_plan.parse_slice('v5e-4')
  devices = pod_plan.devices(slice_, 'tpu')
  assert len(devices) == 4 and {d.device_kind for d in devices} == {'TPU v5 lite'}
  # Each program compiled once (a TPU compile takes 15 s here): the plan's search compiles
  # batch 16 again, which this test compiles first to size the chip.
  compiled_programs, compile_step = {}, pod_plan.compile_step

  def compile_once(config, slice_devices):
    key = (config.batch_size, config.model.remat)
    if key not in compiled_programs:
      compiled_programs[key] = compile_step(config, slice_devices)
    return compiled_programs[key]

  monkeypatch.setattr(pod_plan, 'compile_step', compile_once)
  compiled = pod_plan.compile_step(pod_plan._with_batch(config, 16, 4), devices)
  _, batch_shardings = compiled.input_shardings[0]
  view = batch_shardings['view1']
  assert len(view.device_set) == 4 and view.shard_shape((64, 16, 16, 3)) == (16, 16, 16, 3)
  # A chip with room for 16 images and not for more.
  room_for_16 = pod_plan.hbm_bytes(compiled)['total'] + 1
  monkeypatch.setitem(hardware.TPU_CHIPS, 'v5e',
                      hardware.Chip('TPU v5 lite', room_for_16, 819e9, 200e9))
  (row,) = pod_plan.run(config, str(tmp_path))['rows']
  assert not row['fits'] and row['batch_per_chip'] == 32
  assert row['augment_on'] == 'host' and 'device_augmentation' not in row
  assert row['largest_fitting_batch_per_chip'] == row['planned_batch_per_chip'] == 16
  assert row['largest_fitting_batch_per_chip_with_remat'] >= 16
  assert row['images_per_second'] == pytest.approx(16 * 4 / row['step_ms'] * 1e3)
  assert '| NO | 16 (' in pod_plan.format_table([row])


@needs_cuda_plugin
@pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache')
def test_the_gpu_compiler_plans_a_tiny_step_on_an_h100_host(tmp_path):
  config = tiny_plan_config('h100-8')
  config.batch_size = 64
  config.data.augment_on = 'auto'  # On GPUs: device mode.
  (row,) = pod_plan.run(config, str(tmp_path))['rows']
  assert row['augment_on'] == 'device' and row['device_augmentation']['gflop_per_chip'] > 0
  assert (row['topology'], row['chips'], row['compiler']) == ('1x1x8', 8,
                                                              'GPU (XLA, CUDA plugin)')
  assert row['fits'] and row['chip_hbm_gib'] == pytest.approx(80e9 / 2**30)
  assert 0 < row['hbm_gib']['total'] < 1
  # No cost analysis from this compiler: the FLOPs are the unpartitioned step's per GPU,
  # the bytes those between its kernels, all in HBM.
  assert row['gflop_per_chip'] > 0 and row['hbm_share_of_bytes_accessed'] == 1
  # Its gradients (flat buffers, too small here to be told from BatchNorm statistics) are
  # all-reduced: at least the parameters' bytes.
  parameters = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: create_model(config.model).init(jax.random.key(0), *[jnp.zeros((2, 16, 16, 3))] * 2,
                                               train=False))['params']))
  reduced = sum(ops['all-reduce']['mib'] for ops in row['collectives'].values())
  assert reduced * 2**20 >= 4 * parameters


def test_without_libtpu_the_cpu_compiler_plans_resnet50_at_224px(tmp_path):
  """The fallback: fake CPU devices, the CPU compiler's program (main.py asks for the
  devices before JAX starts)."""
  workdir = tmp_path / 'plan'
  result = run_main('--config=configs/imagenet.py', f'--workdir={workdir}',
                    '--config.dry_run=True', '--config.pod_plan.slices=v5e-8',
                    '--config.pod_plan.compiler=cpu')
  assert result.returncode == 0, result.stderr[-3000:]
  (row,) = json.loads((workdir / 'pod_plan.json').read_text())
  assert (row['slice'], row['chips'], row['batch_per_chip'], row['dtype'], row['compiler']) == (
      'v5e-8', 8, 64, 'bfloat16', 'CPU (fake devices)')
  # About 49 GFLOP per image (two views, forward and backward of ResNet-50 at 224 px: 4.1
  # GMAC = 8.2 GFLOP forward, backward twice that): 64 images on each chip.
  assert row['gflop_per_chip'] == pytest.approx(64 * 2 * 3 * 8.2, rel=0.1)
  assert row['collectives'][pod_plan.GRADIENTS]['all-reduce']['mib'] > 100
  assert '| v5e-8 (v5e:2x4) | CPU (fake devices) | 8 | 64 |' in result.stdout
  assert 'nothing was trained' in result.stdout
  assert not (workdir / 'checkpoints').exists()


def test_collectives_their_bytes_and_kind_are_read_from_compiled_hlo():
  hlo = '\n'.join([
      '  %all-reduce.1 = f32[3,3,64,64]{3,2,1,0} all-reduce(f32[3,3,64,64]{3,2,1,0} %g), '
      'replica_groups={}, to_apply=%add',
      '  %ar = (f32[10]{0}, /*index=1*/bf16[4,2]{1,0}) all-reduce(%a, %b), to_apply=%add',
      '  %stats = (f32[64]{0}, f32[64]{0}) all-reduce-start(%m, %v), to_apply=%add',
      '  %done = (f32[64]{0}, f32[64]{0}) all-reduce-done(%stats)',
      '  %ag = f32[16,8]{1,0} all-gather-start(f32[2,8]{1,0} %x), dimensions={0}',
      # The GPU compiler's gradients, concatenated into one flat buffer.
      '  %flat = f32[7783040]{0} all-reduce-start(%wrapped_concatenate.159), to_apply=%add',
      '  %add.3 = f32[10]{0} add(f32[10]{0} %a, f32[10]{0} %b)',
  ])
  C = pod_plan.Collective
  found = pod_plan.collectives(hlo)
  assert found == [C('all-reduce', 3 * 3 * 64 * 64 * 4, 4), C('all-reduce', 10 * 4 + 8 * 2, 2),
                   C('all-reduce', 2 * 64 * 4, 1), C('all-gather', 16 * 8 * 4, 2),
                   C('all-reduce', 7783040 * 4, 1)]
  assert [c.category for c in found] == [pod_plan.GRADIENTS, pod_plan.GRADIENTS,
                                         pod_plan.VECTORS, pod_plan.GRADIENTS,
                                         pod_plan.GRADIENTS]


@pytest.mark.parametrize('name,topology,chips,hops', [
    ('v4-8', 'v4:2x2x1', 4, 4), ('v4-32', 'v4:2x2x4', 16, 8), ('v4-128', 'v4:4x4x4', 64, 12),
    ('v5e-16', 'v5e:4x4', 16, 8), ('v5e-64', 'v5e:8x8', 64, 16), ('v5litepod-8', 'v5e:2x4', 8, 6),
    ('v5p-128', 'v5:4x4x4', 64, 12), ('v6e-256', 'v6e:16x16', 256, 32)])
def test_slice_names_give_their_topology(name, topology, chips, hops):
  slice_ = pod_plan.parse_slice(name)
  assert (slice_.topology_name, slice_.chips, slice_.all_reduce_hops) == (topology, chips, hops)


@pytest.mark.parametrize('name,hosts,topology,bandwidth,all_reduce_latency_us', [
    ('h100-8', 1, '1x1x8', 450e9, 3.6 + 14 * 0.4),
    ('h100-2', 1, '1x1x2', 450e9, 3.6 + 2 * 0.4),
    # 2 hosts: 30 ring steps, 2 of each 16 over the network.
    ('h100-16', 2, '1x2x8', 50e9, 3.6 + 3.75 * 0.9 + 26.25 * 0.4)])
def test_gpu_slices_are_hosts_of_8_with_nccl_ring_costs(name, hosts, topology, bandwidth,
                                                         all_reduce_latency_us):
  slice_ = pod_plan.parse_slice(name)
  assert (slice_.hosts, slice_.topology_name, slice_.all_reduce_bytes_per_s) == (
      hosts, topology, bandwidth)
  assert slice_.latency_s('all-reduce') * 1e6 == pytest.approx(all_reduce_latency_us)


def test_each_slice_is_planned_by_its_own_compiler_where_installed(monkeypatch):
  config = imagenet.get_config().pod_plan
  monkeypatch.setattr(pod_plan, 'gpu_compiler_installed', lambda: False)
  gpus = pod_plan.parse_slice('h100-8')
  assert [pod_plan.compiler(config, gpus) for config.compiler in ('auto', 'cpu')] == [
      'cpu', 'cpu']
  config.compiler = 'native'
  with pytest.raises(ConfigError, match=r'h100-8 needs its own compiler.*\.\[cuda-plan\]'):
    pod_plan.compiler(config, gpus)
  monkeypatch.setattr(pod_plan, 'gpu_compiler_installed', lambda: True)
  assert pod_plan.compiler(config, gpus) == 'gpu'


@pytest.mark.parametrize('name', ['v3-8', 'v4', 'tpu-8', 'v4-7', 'v4-24', 'v4-4', 'h100-12',
                                  'h100-3', 'h100-0', 'a100-8'])
def test_bad_slice_names_are_refused(name):
  with pytest.raises(ConfigError, match='config.pod_plan.slices'):
    pod_plan.parse_slice(name)


def test_a_dry_run_of_an_evaluation_mode_is_refused():
  config = imagenet.get_config()
  config.dry_run, config.mode, config.pretrained_workdir = True, 'knn', '/tmp/pretrained'
  with pytest.raises(ConfigError, match='config.dry_run'):
    config_validation.validate_mode(config)


@pytest.mark.parametrize('field,value', [('compiler', 'gpu'), ('num_examples', 0),
                                         ('slices', ' , ')])
def test_bad_plan_settings_are_refused_before_compiling(tmp_path, field, value):
  config = imagenet.get_config()
  config.pod_plan[field] = value
  with pytest.raises(ConfigError, match='config.pod_plan'):
    pod_plan.run(config, str(tmp_path))


def test_the_hbm_share_leaves_out_buffers_in_on_chip_memory():
  """Bytes between the entry computation's instructions, by the memory space of their
  buffers: S(3) in a layout (v4's CMEM) is not HBM."""
  hlo = '\n'.join([
      'HloModule m', '',
      'ENTRY %main (p: f32[256]) -> f32[256] {',
      '  %p = f32[256]{0} parameter(0)',
      '  %a = bf16[1024]{0:T(1024)S(3)} fusion(f32[256]{0} %p), kind=kLoop, calls=%f',
      '  %b = f32[256]{0:T(256)} fusion(bf16[1024]{0:T(1024)S(3)} %a), kind=kLoop, calls=%g',
      '  ROOT %t = (f32[256]{0}) tuple(%b)',
      '}'])
  # a reads p (1 KiB, HBM) and writes 2 KiB of CMEM; b reads those and writes 1 KiB of HBM.
  assert pod_plan.memory_space_bytes(hlo) == {0: 2048, 3: 4096}


def test_a_slice_whose_compiler_is_known_to_crash_is_warned_about_before_compiling(
    monkeypatch, caplog):
  """A crash of libtpu ends the process: the warning must come first."""
  def crash(*args):
    raise RuntimeError('the compiler crashed')
  monkeypatch.setattr(pod_plan, 'devices', lambda slice_, compiler: [])
  monkeypatch.setattr(pod_plan, 'compile_step', crash)
  with pytest.raises(RuntimeError, match='the compiler crashed'):
    pod_plan.plan_slice(tiny_plan_config('v6e-4'), pod_plan.parse_slice('v6e-4'), 'tpu')
  assert 'v6e-4: libtpu 0.0.42.1 crashed compiling' in caplog.text
