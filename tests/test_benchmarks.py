"""benchmarks/train_step.py: the real step of a config timed, counted and sized."""

import json
import subprocess
import sys
import types

import pytest

from helpers import REPO_ROOT, TINY_RUN

from benchmarks import pipeline_start, torch_step, xla_cpu_variants
from simsiam_jax.scale import hardware, xla_flags


def test_train_step_benchmark_reports_the_steps_and_the_official_pytorch_step(tmp_path):
  out = tmp_path / 'steps.json'
  config_flags = [f for f in TINY_RUN if f.startswith('--config')]
  result = subprocess.run(
      [sys.executable, 'benchmarks/train_step.py', *config_flags, '--methods=simsiam',
       '--augment_on=host,device', '--rounds=2', '--warmup=1', '--num_examples=64', f'--json_out={out}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    report = json.load(f)
  assert report['devices'] == '8 x cpu'  # The batch is sharded over the test's mesh.
  assert report['peak_source'] == 'measured float32 matmul' and report['peak_tflops_per_device'] > 0
  host, device = 'simsiam, augment_on=host', 'simsiam, augment_on=device'
  assert list(report['results']) == [host, device]
  for figures in report['results'].values():
    assert figures['images_per_second'] == pytest.approx(16 / figures['step_seconds'])
    assert figures['gflop_per_step'] > 0 and figures['memory_mib_per_device'] > 0
    assert 0 < figures['mfu'] < 1
  # The device mode's step holds the augmentation: more FLOPs, a small share of them.
  share = report['device_augmentation']['simsiam']['flops_share']
  assert share == pytest.approx(1 - report['results'][host]['gflop_per_step'] /
                                report['results'][device]['gflop_per_step'])
  assert 0 < share < 0.5
  torch_figures = report['pytorch']
  assert torch_figures['step_seconds'] > 0 and torch_figures['threads'] >= 1
  assert torch_figures['jax_over_pytorch'] == pytest.approx(
      report['results'][host]['step_seconds'] / torch_figures['step_seconds'])
  assert f'| {host} |' in result.stdout and '| pytorch (official' in result.stdout
  assert '--xla_cpu_experimental_ynn_fusion_type=' in report['xla_flags']


def test_the_official_step_is_left_out_where_it_cannot_stand_for_ours(tiny_config):
  assert torch_step.unsupported_reason(tiny_config, 'cpu') is None
  assert 'CPU hosts only' in torch_step.unsupported_reason(tiny_config, 'gpu')
  tiny_config.half_precision = True
  assert 'float32' in torch_step.unsupported_reason(tiny_config, 'cpu')


def test_pipeline_start_benchmark_builds_both_kinds_and_restores_the_pipeline(tiny_config):
  as_built = pipeline_start.input_pipeline._traced_as_written  # pylint: disable=protected-access
  for kind in pipeline_start.KINDS:
    assert pipeline_start.seconds_to_first_batch(tiny_config, kind) > 0
    assert pipeline_start.input_pipeline._traced_as_written is as_built  # pylint: disable=protected-access


def test_the_project_variant_of_the_flag_study_is_the_project_default():
  assert xla_cpu_variants.VARIANTS['project'][0] == ' '.join(xla_flags.CPU_DEFAULTS)


@pytest.mark.parametrize('kind,dtype,expected', [('NVIDIA H100 80GB HBM3', 'bfloat16', 989.0),
                                                 ('NVIDIA A100-SXM4-40GB', 'float32', 19.5),
                                                 ('TPU v4', 'bfloat16', 275.0)])
def test_peak_flops_come_from_the_data_sheet_of_the_device(kind, dtype, expected):
  device = types.SimpleNamespace(platform='gpu', device_kind=kind)
  assert hardware.peak_tflops(device, dtype)[0] == expected
