"""The smoke run on a GPU or TPU (configs/gpu_smoke.py): ResNet-50 in bfloat16 trains, its
loss finite and falling, checkpoints, resumes from the checkpoint, and evaluates kNN.

Marked `accelerator`; on a host without a TPU or GPU (or without JAX's plugin for it) each
test is skipped with the reason. `.ci/accelerator` runs them on a GPU host. The runs are subprocesses
without the session's 8 fake CPU devices (tests/conftest.py), so that JAX picks the
accelerator.
"""

import math
import os
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

from simsiam_jax import reporting
from simsiam_jax.scale import xla_flags

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(not xla_flags.accelerator_present(),
                       reason='no TPU or GPU for JAX on this host (or no jax[cuda12] or '
                              'jax[tpu] for it); the accelerator smoke tests run on GPU/TPU '
                              'hosts'),
]


def _accelerator_env() -> dict:
  env = {name: value for name, value in os.environ.items() if name != 'JAX_PLATFORMS'}
  env['XLA_FLAGS'] = ' '.join(
      flag for flag in env.get('XLA_FLAGS', '').split()
      if not flag.startswith('--xla_force_host_platform_device_count'))
  return env


def _run(*args, timeout=1800):
  return subprocess.run([sys.executable, '-m', 'simsiam_jax.main', *args], cwd=REPO_ROOT,
                        env=_accelerator_env(), capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_the_backend_is_an_accelerator():
  result = subprocess.run([sys.executable, '-c', 'import jax; print(jax.default_backend())'],
                          env=_accelerator_env(), capture_output=True, text=True, timeout=300,
                          check=True)
  assert result.stdout.split()[-1] in ('gpu', 'tpu'), result.stdout


def test_resnet50_in_bfloat16_trains_checkpoints_resumes_and_evaluates(tmp_path):
  workdir = tmp_path / 'smoke'
  first = _run('--config=configs/gpu_smoke.py', f'--workdir={workdir}',
               '--config.num_epochs=1')
  assert first.returncode == 0, first.stderr[-3000:]
  losses = reporting.read_scalars(str(workdir))['loss']
  assert all(math.isfinite(v) for v in losses.values())
  assert losses[max(losses)] < losses[min(losses)], losses
  assert (workdir / 'checkpoints' / '8').is_dir()

  resumed = _run('--config=configs/gpu_smoke.py', f'--workdir={workdir}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from the checkpoint of step 8' in resumed.stderr
  scalars = reporting.read_scalars(str(workdir))
  assert sorted(scalars['knn_top1']) == [0, 8, 16]
  assert all(0 <= v <= 100 for v in scalars['knn_top1'].values())
  assert math.isfinite(scalars['loss'][16])
