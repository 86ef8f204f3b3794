"""The command line: `python -m simsiam_jax.main`, run as a user would."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'simsiam_jax.main', *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('override,field', [
    ('--config.batch_size=12', 'config.batch_size=12'),  # 8 devices in the test session.
    ('--config.model.name=resnet51', 'config.model.name'),
    ('--config.base_lr=-0.1', 'config.base_lr'),
    ('--config.num_epochs=0', 'config.num_epochs'),
    ('--workdir=/nonexistent/parent/run', '--workdir'),
    ('--config.lr_schedule=linear', 'config.lr_schedule'),
    ('--config.data.jpeg_dct_method=FASTEST', 'config.data.jpeg_dct_method'),
])
def test_bad_input_is_one_clear_error_line(tmp_path, override, field):
  args = ['--config=configs/default.py', f'--workdir={tmp_path / "run"}', override]
  result = run_main(*args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error_lines) == 1 and field in error_lines[0], result.stderr[-2000:]
