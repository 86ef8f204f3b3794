"""The command line: `python -m simsiam_jax.main`, run as a user would."""

import asyncio
import gc
import os
import re
import shlex
import subprocess
import sys

from absl import logging as absl_logging

from helpers import REPO_ROOT, run_main
from simsiam_jax import cli


def test_a_run_ends_with_a_summary_whose_next_commands_work(pretrained_run):
  """Pretraining, then the kNN and linear-evaluation commands its summary suggests, each
  ending with its own summary block."""
  workdir, result = pretrained_run
  block = summary_block(result.stdout, f'SimSiam pretraining of {workdir}')
  assert block['steps'] == '1-8 of 8 (finished)'
  assert -1 <= float(block['final loss'].split()[0]) <= 1
  z_std, target = (float(v) for v in re.findall(r'\d\.\d{4}', block['z-std'])[:2])
  assert target == 0.1768 and 0 < z_std < 1  # 1/sqrt(32)
  # kNN at epochs 0, 1 and 2, first -> last.
  assert re.fullmatch(r'[\d.]+% \(step 0\) -> [\d.]+% \(step 8\), [-+][\d.]+ points',
                      block['kNN top-1']), block['kNN top-1']
  assert block['checkpoints'] == os.path.join(workdir, 'checkpoints')
  assert block['TensorBoard'] == f'tensorboard --logdir={workdir}'
  assert all(line.startswith('I') or line.startswith('W') for line in
             result.stderr.splitlines()), 'only absl log lines'
  for noise in ('oneDNN', 'cpu_feature_guard', 'libtpu', 'absl::InitializeLog',
                'tf_record_dataset_op', 'read only'):
    assert noise not in result.stderr, result.stderr

  for mode, title, result_name in (('kNN', 'kNN evaluation', 'knn_eval.json'),
                                   ('linear', 'Linear evaluation', 'linear_eval.json')):
    command = shlex.split(block[f'next: {mode}'])
    assert command[:3] == ['python', '-m', 'simsiam_jax.main']
    evaluation = run_main(*command[3:])
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    evaluation_workdir = f'{workdir}_{"knn" if mode == "kNN" else "linear"}'
    evaluation_block = summary_block(evaluation.stdout, f'{title} of {evaluation_workdir}')
    assert evaluation_block['results'] == os.path.join(evaluation_workdir, result_name)


def summary_block(stdout: str, title: str) -> dict[str, str]:
  """{row name: value} of the closing block titled `title`, the last thing printed."""
  lines = stdout.strip().splitlines()
  start = lines.index(f'== {title} ==')
  rows = [re.split(r'\s{2,}', line, maxsplit=1) for line in lines[start + 1:]]
  return {name: value for name, value in rows}


def test_a_config_given_by_path_loads_from_any_working_directory(tmp_path):
  """Only the package is importable where the command runs, not the repository (whose
  configs package the config files import their base from)."""
  site, elsewhere = tmp_path / 'site', tmp_path / 'elsewhere'
  site.mkdir()
  elsewhere.mkdir()
  os.symlink(os.path.join(REPO_ROOT, 'simsiam_jax'), site / 'simsiam_jax')
  bad_package = tmp_path / 'my_configs'
  bad_package.mkdir()
  (bad_package / '__init__.py').write_text('')
  (bad_package / 'broken.py').write_text('from my_configs import missing_base\n')

  def convert(config_path):
    # The config loads, then the command stops at the empty workdir.
    return subprocess.run(
        [sys.executable, '-m', 'simsiam_jax.convert', f'--config={config_path}',
         f'--workdir={tmp_path / "no_run"}', f'--export_torchvision={tmp_path / "out.pth"}'],
        cwd=elsewhere, env={**os.environ, 'PYTHONPATH': str(site)}, capture_output=True,
        text=True, timeout=300)

  absolute = os.path.join(REPO_ROOT, 'configs', 'imagenet.py')  # It imports base in turn.
  for config_path in (absolute, os.path.relpath(absolute, elsewhere)):
    result = convert(config_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f'error: No checkpoint directory at {tmp_path / "no_run"}.'), result.stderr[-2000:]
  result = convert(bad_package / 'broken.py')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --config={bad_package / "broken.py"}: the config file does not import: '
      "cannot import name 'missing_base' from 'my_configs' "
      f"({bad_package / '__init__.py'})"), result.stderr[-2000:]


def test_help_and_flag_mistakes_answer_without_loading_tensorflow():
  """TensorFlow (5 of the 8 s a run takes to start) loads only once the flags are good."""
  probe = ('import sys\n'
           'from absl import flags\n'
           'from simsiam_jax import main\n'
           'flags.FLAGS(["main", "--config=configs/default.py"])\n'
           'loaded_by_flags = "tensorflow" in sys.modules\n'
           'try:\n'
           '  main.main(["main", "stray"])\n'
           'except SystemExit as e:\n'
           '  assert e.code == 2, e.code\n'
           'print(loaded_by_flags, "tensorflow" in sys.modules)\n')
  result = subprocess.run([sys.executable, '-c', probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ['False', 'False']


class _RaisesWhenCollected:
  """Its error has nowhere to go, so Python hands it to sys.unraisablehook."""

  def __init__(self, fail):
    self.fail = fail

  def __del__(self):
    self.fail()


def test_only_reads_left_behind_by_a_failed_restore_are_not_reported(monkeypatch):
  """When one array of a checkpoint cannot be read, orbax closes the restore's event loop
  while tensorstore's other reads are in flight; each then reports to the closed loop, a
  traceback apiece (hundreds, in about half the runs that fall back to an older checkpoint).
  The tools drop exactly those (cli.quiet_library_output)."""
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', reported.append)
  monkeypatch.setattr(absl_logging.get_absl_handler(), 'filters', [])
  cli.quiet_library_output()
  closed_loop = asyncio.new_event_loop()
  closed_loop.close()
  _RaisesWhenCollected(lambda: closed_loop.call_soon_threadsafe(print))
  _RaisesWhenCollected(lambda: closed_loop.call_soon(print))  # Not from another thread.
  _RaisesWhenCollected(lambda: int('x'))
  gc.collect()
  assert [(type(u.exc_value), str(u.exc_value)) for u in reported] == [
      (RuntimeError, 'Event loop is closed'),
      (ValueError, "invalid literal for int() with base 10: 'x'")]
