"""Test session set-up: 8 fake CPU devices, so sharded code runs as on an 8-chip host, and
a persistent compilation cache shared by every test process and the runs they start."""

import os

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

import pytest  # noqa: E402

from helpers import PRETRAINED_RUN, make_tiny_config, run_main  # noqa: E402


@pytest.fixture
def tiny_config():
  return make_tiny_config()


@pytest.fixture(scope='session')
def pretrained_run(tmp_path_factory):
  """(workdir, command result) of one tiny pretraining run (helpers.PRETRAINED_RUN), shared
  by the tests that read a pretrained workdir; they must leave it as it is."""
  workdir = tmp_path_factory.mktemp('shared') / 'pretrained'
  result = run_main(*PRETRAINED_RUN, f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return str(workdir), result


@pytest.fixture(scope='session')
def pretrained_workdir(pretrained_run):
  return pretrained_run[0]


# Run only with `-m slow` (setup.cfg deselects them): the ResNet-50 float64 parity checks,
# 266 s of test time (2026-12-02); CI, at 39 minutes, has no room for them until it is cut.
# CI runs the same checks on ResNet-18 in float64 and on ResNet-50 in float32.
SLOW_TESTS = (
    'test_torch_parity.py::test_five_float64_sgd_steps_are_the_official_optimizer[resnet50]',
    'test_torch_parity.py::test_float64_outputs_statistics_and_gradients_are_the_same_'
    'computation[resnet50-True]',
)
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
  for item in items:
    if item.nodeid.endswith(SLOW_TESTS):
      item.add_marker(pytest.mark.slow)
  order = {name: i for i, name in enumerate(LONG_MODULES)}
  # Stable: the order within a module is kept.
  items.sort(key=lambda item: order.get(item.path.name, len(LONG_MODULES)))
