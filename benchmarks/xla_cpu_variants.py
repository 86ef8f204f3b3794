"""XLA CPU settings tried on the train step, each against the official PyTorch step.

  python benchmarks/xla_cpu_variants.py --config=configs/cifar10_cpu.py [--rounds=5] \
      [--variants=jaxlib,project,...] [--config.FIELD=VALUE ...]

Each variant is one run of benchmarks/train_step.py in its own process (XLA reads its flags
once, when the backend starts), with the project's CPU defaults off and the variant's
XLA_FLAGS set. Within a run the JAX and PyTorch steps alternate, so the JAX/PyTorch ratio
is what to compare across variants: it cancels whatever else the machine did meanwhile.
BENCHMARKS.md records the table this prints.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
  """The script's flags; defined only when it runs, so that tests can import VARIANTS
  beside modules with flags of the same names."""
  flags.DEFINE_string('config', 'configs/cifar10_cpu.py', 'Config file whose step to time.')
  flags.DEFINE_list('variants', None, 'Variants to run (default: all of VARIANTS).')
  flags.DEFINE_integer('rounds', 5, 'Timed steps per variant.')

_NO_YNN = '--xla_cpu_experimental_ynn_fusion_type='
# name: (XLA_FLAGS, what it changes). 'project' must stay the flags simsiam_jax/scale/xla_flags.py
# sets by default; the test of this script checks that.
VARIANTS = {
    'jaxlib': ('', "jaxlib's defaults: YNNPACK for matmuls, convolutions and reductions"),
    'project': (_NO_YNN, 'YNNPACK off: Eigen convolutions (the project default on CPU)'),
    'ynn_dot_only': ('--xla_cpu_experimental_ynn_fusion_type=individual_dot',
                     'YNNPACK for matmuls only'),
    'ynn_dot_reduce': ('--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce',
                       'YNNPACK for matmuls and reductions, not convolutions'),
    'ynn_dot_two_devices': ('--xla_cpu_experimental_ynn_fusion_type=individual_dot '
                            '--xla_force_host_platform_device_count=2',
                            'YNNPACK for matmuls, the batch over 2 CPU devices'),
    'xnn_convolution': (f'{_NO_YNN} --xla_cpu_experimental_xnn_fusion_type=individual_convolution',
                        'XNNPACK convolutions instead'),
    'two_devices': (f'{_NO_YNN} --xla_force_host_platform_device_count=2',
                    'the batch split over 2 CPU devices of the mesh'),
    'fast_runtime': (f'{_NO_YNN} --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME',
                     "XLA's fast-runtime optimisation preset"),
    'concurrency_scheduler': (
        f'{_NO_YNN} --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED',
        'the concurrency-optimised scheduler'),
    'onednn': (f'{_NO_YNN} --xla_cpu_use_onednn=true', 'oneDNN thunks for convolutions/matmuls'),
    # What JAX_DISABLE_MOST_OPTIMIZATIONS=1 sets, the test suite's setting (tests/conftest.py).
    'unoptimised': (f'{_NO_YNN} --xla_backend_optimization_level=0 '
                    '--xla_llvm_disable_expensive_passes=true',
                    "most of XLA's optimisations off: faster compiles, slower steps"),
}


def run_variant(name: str, config_args: list[str]) -> dict:
  """One variant's train_step.py report, or {'error': last lines} if it failed."""
  xla_flags, _ = VARIANTS[name]
  env = {**os.environ, 'XLA_FLAGS': xla_flags, 'SIMSIAM_XLA_CPU_DEFAULTS': '0'}
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'step.json')
    result = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), 'train_step.py'),
         f'--config={FLAGS.config}', *config_args, f'--rounds={FLAGS.rounds}',
         f'--json_out={out}'], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      return {'error': result.stderr.strip().splitlines()[-1:] or ['exit %d' % result.returncode]}
    with open(out) as f:
      return json.load(f)


def main(argv):
  config_args = [arg for arg in argv[1:] if arg.startswith('--config.')]
  unknown = [arg for arg in argv[1:] if arg not in config_args]
  if unknown:
    raise app.UsageError(f'unknown arguments: {unknown}')
  names = FLAGS.variants or list(VARIANTS)
  bad = sorted(set(names) - set(VARIANTS))
  if bad:
    raise app.UsageError(f'unknown variants {bad}; known: {list(VARIANTS)}')
  print('| variant | XLA_FLAGS | JAX step (s) | PyTorch step (s) | JAX/PyTorch | JAX compile (s) |')
  print('|---|---|---|---|---|---|')
  for name in names:
    report = run_variant(name, config_args)
    xla_flags, what = VARIANTS[name]
    if 'error' in report:
      print(f'| {name}: {what} | `{xla_flags}` | failed: {report["error"][0][:80]} | | | |')
      continue
    (jax_figures,) = report['results'].values()
    torch_figures = report.get('pytorch', {})
    print(f'| {name}: {what} | `{xla_flags or "(none)"}` | {jax_figures["step_seconds"]:.3f} | '
          f'{torch_figures.get("step_seconds", float("nan")):.3f} | '
          f'{torch_figures.get("jax_over_pytorch", float("nan")):.2f}x | '
          f'{jax_figures["compile_seconds"]:.1f} |', flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=lambda argv: [argv[0], *FLAGS(argv, known_only=True)[1:]])
