"""Set-up shared by the test modules."""

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from configs import default
from simsiam_jax import checkpointing, methods, sharding, train, workdir
from simsiam_jax.data import input_pipeline

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 64 generated images, batch 16: 4 steps per epoch.
TINY_RUN = ['--config=configs/default.py', '--config.model.width=4',
            '--config.model.projector_hidden_dim=32', '--config.model.projector_dim=32',
            '--config.model.predictor_hidden_dim=8', '--config.data.image_size=16',
            '--config.data.synthetic_train_examples=64',
            '--config.data.synthetic_eval_examples=32', '--config.batch_size=16',
            '--config.log_every_steps=1', '--config.evals.knn.every_epochs=0']

# The shared pretrained run of tests/conftest.py: 2 epochs (8 steps), kNN after each, and the
# linear evaluation its summary suggests shrunk to seconds.
PRETRAINED_RUN = [*TINY_RUN, '--config.num_epochs=2', '--config.evals.knn.every_epochs=1',
                  '--config.linear.batch_size=16', '--config.linear.num_epochs=1']


@contextlib.contextmanager
def xla_optimizations():
  """XLA's optimisation passes on for the programs compiled within, as a run compiles them
  (tests/conftest.py turns most of them off for the suite)."""
  disabled = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  try:
    yield
  finally:
    jax.config.update('jax_disable_most_optimizations', disabled)


def start_main(*args):
  return subprocess.Popen([sys.executable, '-m', 'simsiam_jax.main', *args], cwd=REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(workdir, process, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if os.path.isdir(os.path.join(workdir, 'checkpoints')) and checkpoint_steps(workdir):
      return
    time.sleep(0.05)
  raise AssertionError(f'no checkpoint appeared; output:\n{process.communicate()[0][-3000:]}')


def kill_after_a_checkpoint(args, workdir, total_steps: int) -> int:
  """Runs main with `args` until a checkpoint is in `workdir`, SIGKILLs it (no chance to
  save) and returns the newest saved step, checked to be before `total_steps`."""
  process = start_main(*args, f'--workdir={workdir}')
  wait_for_checkpoint(workdir, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = checkpoint_steps(workdir)
  assert saved and saved[-1] < total_steps, 'the run finished before it was killed'
  return saved[-1]


def numpy_negative_cosine(p, z):
  """D(p, z) = -mean cos(p_i, z_i) over the batch, in float64: the tests' reference."""
  p, z = (np.asarray(x, np.float64) for x in (p, z))
  p = p / np.linalg.norm(p, axis=1, keepdims=True)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  return -np.mean(np.sum(p * z, axis=1))


def run_main(*args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'simsiam_jax.main', *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


def checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def restore_final_state(config, workdir, steps_per_epoch: int):
  """({'step', 'params', 'batch_stats', 'opt_state', 'method_state'} as numpy, step) of the
  newest checkpoint in `workdir`, restored into the train state `config` creates."""
  state, _ = state_and_step(config, sharding.create_mesh(), steps_per_epoch)
  with checkpointing.Checkpointer(workdir, max_to_keep=3, save_every_steps=1000) as ckpt:
    restored, step = ckpt.restore(state)
  arrays = {name: getattr(restored, name) for name in
            ('step', 'params', 'batch_stats', 'opt_state', 'method_state')}
  return jax.device_get(arrays), step


def make_tiny_config():
  """The default config shrunk until a train step takes well under a second on a CPU."""
  config = default.get_config()
  config.model.width = 4
  config.model.projector_hidden_dim = 32
  config.model.projector_dim = 32
  config.model.predictor_hidden_dim = 8
  config.data.image_size = 16
  config.data.synthetic_train_examples = 64
  config.data.synthetic_eval_examples = 32
  config.batch_size = 16
  config.num_epochs = 2
  config.log_every_steps = 2
  config.evals.knn.every_epochs = 0
  return config


def state_and_step(config, mesh, steps_per_epoch: int, num_train_examples: int | None = None):
  """(initial train state of config.method on `mesh`, its jitted train step), as the loop
  makes them; the memory bank has a row per image of config.data.synthetic_train_examples
  unless `num_train_examples` says otherwise."""
  method = methods.get(config.method)
  tx = method.create_optimizer(config, steps_per_epoch)
  num_train_examples = num_train_examples or config.data.synthetic_train_examples
  state = method.create_train_state(jax.random.key(config.seed), config, tx, mesh,
                                    num_train_examples)
  return state, train.make_train_step(config, steps_per_epoch, mesh, state)


def pretrain_batches(config, mesh):
  """The global batches of the pretraining pipeline on `mesh`, as the loop gets them."""
  return input_pipeline.prefetch_to_mesh(input_pipeline.create_pretrain_iterator(config), mesh)


def run_steps(config, num_steps: int, mesh=None, steps_per_epoch: int = 4):
  """[(state after each step, metrics)] of `num_steps` real train steps, on the host."""
  mesh = mesh or sharding.create_mesh()
  state, step_fn = state_and_step(config, mesh, steps_per_epoch)
  return steps_from(config, state, step_fn, mesh, num_steps)


def steps_from(config, state, step_fn, mesh, num_steps: int):
  """[(state after each step, metrics)] on the host of `num_steps` steps from `state`, on
  the pipeline's first batches."""
  history = []
  for batch in itertools.islice(pretrain_batches(config, mesh), num_steps):
    state, metrics = step_fn(state, batch)
    history.append((jax.device_get(state), jax.device_get(metrics)))
  return history


class _StopAtStep:
  """A preemption flag raised at the `step`-th poll of the loop (once per step)."""

  def __init__(self, step):
    self._polls_left = step

  @property
  def requested(self):
    self._polls_left -= 1
    return self._polls_left == 0


def uninterrupted_and_resumed_states(config, tmp_path, monkeypatch, *, stop_at: int,
                                     steps_per_epoch: int = 4):
  """(final state of an uninterrupted run of `config`, final state of the same run preempted
  after step `stop_at` and resumed), each as restore_final_state gives it, after checking
  that both reached the last step."""
  train.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  monkeypatch.setattr(workdir, 'install_sigterm_handler', lambda: _StopAtStep(stop_at))
  summary = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert summary['step'] == stop_at
  monkeypatch.undo()
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  expected, step = restore_final_state(config, tmp_path / 'uninterrupted', steps_per_epoch)
  resumed, resumed_step = restore_final_state(config, tmp_path / 'resumed', steps_per_epoch)
  assert step == resumed_step == int(config.num_epochs * steps_per_epoch)
  return expected, resumed
