"""benchmarks/train_step.py: the real step of a config timed, counted and sized."""

import json
import subprocess
import sys
import types

import pytest

from helpers import REPO_ROOT, TINY_RUN

from simsiam_jax import hardware


def test_train_step_benchmark_reports_the_step_of_a_method(tmp_path):
  out = tmp_path / 'steps.json'
  config_flags = [f for f in TINY_RUN if f.startswith('--config')]
  result = subprocess.run(
      [sys.executable, 'benchmarks/train_step.py', *config_flags, '--methods=simclr',
       '--rounds=2', '--warmup=1', '--num_examples=64', f'--json_out={out}'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    report = json.load(f)
  assert report['devices'] == '8 x cpu'  # The batch is sharded over the test's mesh.
  assert report['peak_source'] == 'measured float32 matmul' and report['peak_tflops_per_device'] > 0
  assert list(report['results']) == ['simclr']
  for figures in report['results'].values():
    assert figures['images_per_second'] == pytest.approx(16 / figures['step_seconds'])
    assert figures['gflop_per_step'] > 0 and figures['memory_mib_per_device'] > 0
    assert 0 < figures['mfu'] < 1
  assert '| simclr |' in result.stdout


@pytest.mark.parametrize('kind,dtype,expected', [('NVIDIA H100 80GB HBM3', 'bfloat16', 989.0),
                                                 ('NVIDIA A100-SXM4-40GB', 'float32', 19.5),
                                                 ('TPU v4', 'bfloat16', 275.0)])
def test_peak_flops_come_from_the_data_sheet_of_the_device(kind, dtype, expected):
  device = types.SimpleNamespace(platform='gpu', device_kind=kind)
  assert hardware.peak_tflops(device, dtype)[0] == expected
