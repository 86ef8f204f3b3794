"""simsiam_jax/scale/xla_flags.py: the project's XLA settings on CPU hosts, and only there."""

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO_ROOT

from simsiam_jax.scale import xla_flags

_YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_cpu_defaults_are_added_after_the_flags_already_set():
  assert xla_flags.with_cpu_defaults('--xla_force_host_platform_device_count=8') == (
      f'--xla_force_host_platform_device_count=8 {_YNN}=')
  assert xla_flags.with_cpu_defaults('') == f'{_YNN}='


def test_a_flag_the_user_set_keeps_the_users_value():
  assert xla_flags.with_cpu_defaults(f'{_YNN}=individual_convolution') == (
      f'{_YNN}=individual_convolution')


@pytest.mark.parametrize('environ,accelerator,applied', [
    ({}, False, True),  # A CPU-only host, libtpu installed or not.
    ({}, True, False),  # A TPU or GPU host: XLA_FLAGS as the user left it.
    ({'JAX_PLATFORMS': 'cpu'}, True, True),  # The CPU asked for on an accelerator host.
    ({'JAX_PLATFORMS': 'cuda,cpu'}, False, False),
    ({'SIMSIAM_XLA_CPU_DEFAULTS': '0'}, False, False),
])
def test_cpu_defaults_apply_where_jax_runs_on_the_cpu(monkeypatch, environ, accelerator,
                                                      applied):
  monkeypatch.setattr(xla_flags, 'accelerator_present', lambda: accelerator)
  environ = {**environ, 'XLA_FLAGS': '--xla_dump_to=/tmp/x'}
  assert xla_flags.apply_cpu_defaults(environ) == applied
  expected = f'--xla_dump_to=/tmp/x {_YNN}=' if applied else '--xla_dump_to=/tmp/x'
  assert environ['XLA_FLAGS'] == expected


def test_importing_the_package_sets_the_flags_before_jax_compiles(tmp_path):
  """XLA compiles after `import simsiam_jax` without YNNPACK convolutions (its compile
  options, dumped, say which library fusions it used); with SIMSIAM_XLA_CPU_DEFAULTS=0,
  jaxlib's defaults send them to YNNPACK."""
  program = ('import simsiam_jax, jax, jax.numpy as jnp\n'
             'x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))\n'
             'jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", '
             'dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, w).compile()')

  def ynn_fusions(name, **env):
    dump = tmp_path / name
    # Compiled afresh, not read from the session's compilation cache.
    environ = {**os.environ, 'XLA_FLAGS': f'--xla_dump_to={dump}',
               'JAX_ENABLE_COMPILATION_CACHE': 'false', **env}
    subprocess.run([sys.executable, '-c', program], cwd=REPO_ROOT, env=environ,
                   capture_output=True, text=True, timeout=300, check=True)
    options = ''.join(p.read_text() for p in dump.glob('*/compile_options.textproto'))
    return set(re.findall(r'xla_cpu_experimental_ynn_fusion_type: (\w+)', options))

  assert 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION' in ynn_fusions(
      'jaxlib', SIMSIAM_XLA_CPU_DEFAULTS='0')
  assert 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION' not in ynn_fusions('project')


@pytest.mark.skipif(not xla_flags.accelerator_plugin_installed(),
                    reason='no accelerator plugin installed')
def test_an_accelerator_plugin_without_the_chip_keeps_the_cpu_defaults():
  """CI installs libtpu for the pod plan's compiler on a host with no TPU: JAX runs on the
  CPU there, and so the CPU defaults apply, JAX_PLATFORMS set or not."""
  assert not xla_flags.accelerator_present()
  environ = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  result = subprocess.run(
      [sys.executable, '-c', 'import os, simsiam_jax; print(os.environ["XLA_FLAGS"])'],
      cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300, check=True)
  assert result.stdout.split() == [f'{_YNN}=']
