"""The pretraining loop through the command line: resume after SIGKILL, SIGTERM, NaN guard."""

import os
import signal
import time

import jax
import numpy as np
import pytest

from helpers import (TINY_RUN, checkpoint_steps, kill_after_a_checkpoint, make_tiny_config,
                     restore_final_state, run_main, start_main)
from simsiam_jax.reporting import read_scalars


def test_resume_after_sigkill_continues_exactly_like_an_uninterrupted_run(tmp_path):
  """With the augmentation on the device, whose draws come from the restored step (the host
  mode's resumptions are those of the methods' and EM variants' tests)."""
  args = [*TINY_RUN, '--config.num_epochs=10', '--config.checkpoint_every_steps=5',
          '--config.data.augment_on=device']
  reference = tmp_path / 'uninterrupted'
  result = run_main(*args, f'--workdir={reference}')
  assert result.returncode == 0, result.stderr[-3000:]
  reference_losses = read_scalars(reference)['loss']
  assert sorted(reference_losses) == list(range(1, 41))

  interrupted = tmp_path / 'interrupted'
  resumed_from = kill_after_a_checkpoint(args, interrupted, total_steps=40)

  result = run_main(*args, f'--workdir={interrupted}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {resumed_from}' in result.stderr
  resumed_losses = read_scalars(interrupted)['loss']
  assert max(resumed_losses) == 40
  for step in range(resumed_from + 1, 41):
    assert resumed_losses[step] == pytest.approx(reference_losses[step], rel=1e-5, abs=1e-6), step
  # The whole state, BatchNorm running averages (what kNN and linear evaluation read) and
  # optimizer momentum included, not only the losses.
  config = make_tiny_config()
  config.num_epochs = 10
  config.data.augment_on = 'device'
  expected, step = restore_final_state(config, reference, steps_per_epoch=4)
  resumed, resumed_step = restore_final_state(config, interrupted, steps_per_epoch=4)
  assert step == resumed_step == 40
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_sigterm_saves_the_current_step_and_a_rerun_resumes_from_it(tmp_path):
  args = [*TINY_RUN, '--config.num_epochs=500', '--config.checkpoint_every_steps=100000',
          f'--workdir={tmp_path}']
  process = start_main(*args)
  for line in process.stdout:  # Until training is under way.
    if ' loss ' in line:
      break
  process.send_signal(signal.SIGTERM)
  output = ''.join(process.stdout)
  process.wait(timeout=120)
  assert process.returncode == 0, output[-3000:]
  assert 'Preempted: saved step' in output
  (saved_step,) = checkpoint_steps(tmp_path)
  assert 0 < saved_step < 2000

  result = run_main(*args[:-2], '--config.num_epochs=1', '--config.checkpoint_every_steps=1',
                    f'--workdir={tmp_path}')
  # The schedule is now shorter than the saved step: nothing left to train, nothing lost.
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resumed from the checkpoint of step {saved_step}' in result.stderr


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  result = run_main(*TINY_RUN, '--config.num_epochs=5', '--config.checkpoint_every_steps=2',
                    '--config.optim.base_lr=1e30', f'--workdir={tmp_path}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  (error,) = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  bad_step = int(error.split('at step ')[1].split(':')[0])
  assert all(step < bad_step for step in checkpoint_steps(tmp_path))


def test_a_second_run_on_a_live_workdir_is_refused(tmp_path):
  args = [*TINY_RUN, '--config.num_epochs=500', f'--workdir={tmp_path}']
  first = start_main(*args)
  try:
    deadline = time.time() + 300
    while not os.path.exists(tmp_path / '.simsiam.lock') and time.time() < deadline:
      time.sleep(0.1)
    second = run_main(*args)
    assert second.returncode == 2
    error_lines = [l for l in second.stderr.splitlines() if l.startswith('error:')]
    assert len(error_lines) == 1 and str(tmp_path) in error_lines[0], second.stderr[-2000:]
  finally:
    first.kill()
    first.wait()
