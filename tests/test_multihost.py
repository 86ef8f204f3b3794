"""Two JAX processes on this machine, as two hosts of a pod: jax.distributed, per-process
data shards assembled into one global batch (the same as one process's), a collective
checkpoint, and resume."""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np

from helpers import (REPO_ROOT, TINY_RUN, checkpoint_steps, make_tiny_config,
                     restore_final_state, wait_for_checkpoint)
from simsiam_jax import workdir as workdir_lib


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_two_processes(args):
  port = _free_port()
  processes = []
  for process_id in range(2):
    env = {**os.environ, 'SIMSIAM_DISTRIBUTED': '1',
           'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}', 'JAX_NUM_PROCESSES': '2',
           'JAX_PROCESS_ID': str(process_id),
           'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'simsiam_jax.main', *args], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return processes


def _run_two_processes(args, timeout=600):
  processes = _start_two_processes(args)
  try:
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    outputs = [p.communicate()[0] for p in processes]
    raise AssertionError(f'still running after {timeout} s:\n' + '\n'.join(
        out[-2000:] for out in outputs)) from None
  return [p.returncode for p in processes], outputs


def test_two_processes_train_checkpoint_and_resume(tmp_path, pretrained_workdir):
  def args(num_epochs):
    return [*TINY_RUN, f'--config.num_epochs={num_epochs}',
            '--config.checkpoint_every_steps=4', f'--workdir={tmp_path}']

  returncodes, outputs = _run_two_processes(args(2))
  assert returncodes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert 'JAX process 0/2' in outputs[0] and 'JAX process 1/2' in outputs[1]
  assert 'on 4 devices, global batch 16' in outputs[0]
  assert checkpoint_steps(tmp_path) == [4, 8]
  # Two hosts of 2 devices train what one host of 8 does on the same global batches (the
  # shared run of conftest.py, same config): each host read its own share of every batch.
  config = make_tiny_config()
  two_hosts, step = restore_final_state(config, tmp_path, steps_per_epoch=4)
  one_host, one_host_step = restore_final_state(config, pretrained_workdir, steps_per_epoch=4)
  assert step == one_host_step == 8
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               two_hosts, one_host)

  returncodes, outputs = _run_two_processes(args(3))
  assert returncodes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert all('Resumed from the checkpoint of step 8' in out for out in outputs)
  assert checkpoint_steps(tmp_path)[-1] == 12


def test_every_process_stops_when_the_workdir_is_locked(tmp_path):
  """Process 0 takes the lock for the run; process 1 must stop with it, not wait for it."""
  lock = workdir_lib.acquire_lock(tmp_path)  # This live test process holds the workdir.
  try:
    # A process left waiting for process 0 would hang until the timeout.
    returncodes, outputs = _run_two_processes([*TINY_RUN, f'--workdir={tmp_path}'],
                                              timeout=180)
  finally:
    workdir_lib.release_lock(lock)
  assert returncodes == [2, 2], outputs[0][-3000:] + outputs[1][-3000:]
  errors = [[line for line in out.splitlines() if line.startswith('error:')] for out in outputs]
  assert f'in use by process {os.getpid()}' in errors[0][0]
  assert 'process 0 could not take the workdir lock' in errors[1][0]


def test_two_processes_resume_a_killed_linear_evaluation(tmp_path, pretrained_workdir):
  args = [*TINY_RUN, '--config.mode=linear_eval',
          f'--config.pretrained_workdir={pretrained_workdir}', '--config.linear.batch_size=16',
          '--config.linear.num_epochs=20', '--config.linear.checkpoint_every_steps=3',
          f'--workdir={tmp_path}']
  processes = _start_two_processes(args)
  try:
    wait_for_checkpoint(tmp_path, processes[0])
  finally:
    for process in processes:
      process.kill()
      process.wait()
  saved = checkpoint_steps(tmp_path)
  assert saved and saved[-1] < 80, 'the run finished before it was killed'
  returncodes, outputs = _run_two_processes(args)
  assert returncodes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  resumed = [re.search(r'Resumed the linear evaluation from the checkpoint of step (\d+)', out)
             for out in outputs]
  assert all(resumed) and [int(r[1]) for r in resumed] == [saved[-1]] * 2
  with open(tmp_path / 'linear_eval.json') as f:  # configs/default.py: every 10 epochs.
    assert sorted(json.load(f)['history']) == ['10.0', '20.0']
