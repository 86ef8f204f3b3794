"""Seconds from building the pretraining pipeline to its first batch, as the project builds
it and with AutoGraph rewriting the augmentations' Python (tf.data's default), side by side.

  python benchmarks/pipeline_start.py [--config=configs/default.py] [--repeats=5] \
      [--config.FIELD=VALUE ...]

Each build runs in a fresh process, as every run of `simsiam_jax.main` builds its pipeline
once (AutoGraph keeps what it rewrote for the rest of a process); the two kinds alternate,
so that other load on the machine falls on both. Prints the median of each and their ratio.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

# The repository, for `python benchmarks/pipeline_start.py` from its root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from simsiam_jax import cli

cli.import_tensorflow_quietly()

from simsiam_jax.data import input_pipeline
# pylint: enable=wrong-import-position

FLAGS = flags.FLAGS
KINDS = ('as_written', 'autograph')


def define_flags():
  """The script's flags; defined only when it runs, so that tests can import its functions
  beside modules with flags of the same names."""
  config_flags.DEFINE_config_file('config', 'configs/default.py', 'Configuration whose '
                                  'pretraining pipeline to build.', lock_config=True)
  flags.DEFINE_integer('repeats', 5, 'Builds of each kind (the median is reported).')
  flags.DEFINE_enum('kind', None, KINDS, 'Build this kind once in this process and print '
                    'its seconds (what each repeat runs).')


def seconds_to_first_batch(config, kind: str) -> float:
  """One build of the pretraining pipeline: 'as_written' (the project's) or 'autograph'."""
  traced_as_written = input_pipeline._traced_as_written  # pylint: disable=protected-access
  if kind == 'autograph':
    input_pipeline._traced_as_written = lambda fn: fn  # pylint: disable=protected-access
  try:
    started = time.perf_counter()
    next(input_pipeline.create_pretrain_iterator(config))
    return time.perf_counter() - started
  finally:
    input_pipeline._traced_as_written = traced_as_written  # pylint: disable=protected-access


def measure(config_args: list[str], repeats: int) -> dict[str, float]:
  """{kind: median seconds to the first batch over `repeats` fresh processes, 'ratio':
  autograph / as_written} for the config of `config_args` (--config=..., --config.*)."""
  times = {kind: [] for kind in KINDS}
  for _ in range(repeats):
    for kind in KINDS:
      output = subprocess.run([sys.executable, __file__, f'--kind={kind}', *config_args],
                              check=True, capture_output=True, text=True).stdout
      times[kind].append(float(output.strip().splitlines()[-1]))
  medians = {kind: statistics.median(t) for kind, t in times.items()}
  return {**medians, 'ratio': medians['autograph'] / medians['as_written']}


def main(argv):
  cli.check_no_arguments(argv)
  config = FLAGS.config
  if FLAGS.kind:
    print(seconds_to_first_batch(config, FLAGS.kind))
    return
  config_args = [arg for arg in sys.argv[1:] if arg.startswith('--config')]
  result = measure(config_args, FLAGS.repeats)
  print(f'{config.model.name} config, {config.data.source} data at {config.data.image_size}px, '
        f'batch {config.batch_size}, augment_on={config.data.augment_on}; median of '
        f'{FLAGS.repeats} fresh processes each')
  print(f'first batch, augmentations traced as written: {result["as_written"]:.2f} s')
  print(f'first batch, rewritten by AutoGraph:          {result["autograph"]:.2f} s '
        f'({result["ratio"]:.2f}x)')
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
