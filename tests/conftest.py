"""Test session set-up: 8 fake CPU devices, so sharded code runs as on an 8-chip host, and
a persistent compilation cache shared by every test process and the runs they start."""

import fcntl
import json
import os
import subprocess

# Must happen before jax is first imported anywhere in the session.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Dozens of tests and command-line runs compile the same tiny programs; from the second time
# on they are read from disk (a tiny pretraining run: 24 s instead of 37 s). Programs that
# compile in milliseconds are cached too.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
# Most programs of the suite are tiny models run for a few steps, where XLA's optimisation
# passes cost more than they save: without them the tiny pretraining step compiles 1.75x
# faster and runs 3.5x slower (BENCHMARKS.md). The command-line runs the tests start
# inherit it. The torch parity tests, whose steps run long, turn them back on
# (helpers.xla_optimizations).
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import pytest  # noqa: E402

from helpers import PRETRAINED_RUN, make_tiny_config, run_main  # noqa: E402


@pytest.fixture
def tiny_config():
  return make_tiny_config()


@pytest.fixture(scope='session')
def pretrained_run(tmp_path_factory, testrun_uid):
  """(workdir, command result) of one tiny pretraining run (helpers.PRETRAINED_RUN), shared
  by the tests that read a pretrained workdir; they must leave it as it is. One run for the
  whole test session: the first of pytest-xdist's test processes to ask makes it, the
  others wait for it (each would otherwise make its own, a minute of CPU under load)."""
  shared = tmp_path_factory.getbasetemp().parent / f'pretrained-{testrun_uid}'
  shared.mkdir(exist_ok=True)
  workdir, record = shared / 'pretrained', shared / 'result.json'
  with open(shared / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not record.exists():
      result = run_main(*PRETRAINED_RUN, f'--workdir={workdir}')
      record.write_text(json.dumps({'args': result.args, 'returncode': result.returncode,
                                    'stdout': result.stdout, 'stderr': result.stderr}))
  result = subprocess.CompletedProcess(**json.loads(record.read_text()))
  assert result.returncode == 0, result.stderr[-3000:]
  return str(workdir), result


@pytest.fixture(scope='session')
def pretrained_workdir(pretrained_run):
  return pretrained_run[0]


# Modules of a minute or more go first, longest first: the two test processes of `pytest -n 2 --dist
# loadscope` then end together on short modules rather than one waiting for the other. The
# pod plan's TPU compiles (a core each, for minutes) go first, so that they are over before
# the multi-host tests, whose processes must meet within gloo's 30 s.
LONG_MODULES = ('test_pod_plan.py', 'test_torch_parity.py', 'test_train_loop.py',
                'test_multihost.py', 'test_bad_input.py', 'test_methods.py',
                'test_evaluation.py', 'test_packaging.py', 'test_ablations.py',
                'test_em_variants.py')


def pytest_collection_modifyitems(config, items):
  del config
  order = {name: i for i, name in enumerate(LONG_MODULES)}
  # Stable: the order within a module is kept.
  items.sort(key=lambda item: order.get(item.path.name, len(LONG_MODULES)))
