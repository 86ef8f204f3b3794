"""The project's XLA settings for CPU hosts, set in XLA_FLAGS before JAX's backend starts.

On CPU, this jaxlib sends float32 convolutions to YNNPACK, whose filter-gradient
convolutions are several times slower than Eigen's on the train step's shapes;
benchmarks/xla_cpu_variants.py measures each setting tried (BENCHMARKS.md has the table).
These flags only concern XLA's CPU compiler, and they are set only where JAX will run on the
CPU: where JAX_PLATFORMS asks for the CPU alone, or, without JAX_PLATFORMS, where no TPU or
GPU is present (an accelerator plugin such as libtpu, which the pod plan compiles with, may
be installed on a CPU-only host).

A flag already in XLA_FLAGS wins over the project's value for it, and
SIMSIAM_XLA_CPU_DEFAULTS=0 leaves XLA_FLAGS untouched. XLA reads the variable once: these
settings apply only if simsiam_jax is imported before JAX's first computation.
"""

import importlib.metadata
import importlib.util
import os
from typing import MutableMapping

CPU_DEFAULTS = ('--xla_cpu_experimental_ynn_fusion_type=',)


def accelerator_plugin_installed() -> bool:
  """Whether JAX may start a TPU or GPU backend here (libtpu, or a jax_plugins entry point
  such as jax-cuda12-plugin's)."""
  return (importlib.util.find_spec('libtpu') is not None
          or bool(importlib.metadata.entry_points(group='jax_plugins')))


def accelerator_present() -> bool:
  """Whether JAX will start a TPU or GPU backend here: a plugin for one is installed and the
  host shows such a chip (the devices JAX's own start-up looks for)."""
  if not accelerator_plugin_installed():
    return False
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
  return (hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
          or hardware_utils.has_visible_nvidia_gpu()
          or hardware_utils.num_available_amd_gpus(stop_at=1) > 0)


def with_cpu_defaults(xla_flags: str) -> str:
  """`xla_flags` plus each of CPU_DEFAULTS whose flag it does not set already."""
  given = {flag.split('=', 1)[0] for flag in xla_flags.split()}
  added = [flag for flag in CPU_DEFAULTS if flag.split('=', 1)[0] not in given]
  return ' '.join([xla_flags, *added]).strip()


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> bool:
  """Adds CPU_DEFAULTS to environ['XLA_FLAGS'] on CPU-only hosts; whether it did."""
  if environ.get('SIMSIAM_XLA_CPU_DEFAULTS') == '0':
    return False
  platforms = environ.get('JAX_PLATFORMS', '')
  if platforms:
    cpu_only = platforms.strip() == 'cpu'
  else:
    cpu_only = not accelerator_present()
  if not cpu_only:
    return False
  environ['XLA_FLAGS'] = with_cpu_defaults(environ.get('XLA_FLAGS', ''))
  return True
