"""Entry point: `python -m simsiam_jax.main --config=configs/default.py --workdir=DIR`.

Parses flags and hands over to the `train_and_evaluate` of the config's mode (modes.py):
pretraining (`train`), linear evaluation (`linear_eval`) or kNN of a checkpoint
(`evaluators`); with --config.dry_run=True, the compile-only plan of pretraining on TPU
slices (`pod_plan`).
Mistakes in the config, the flags, the data or the checkpoints end as one `error:` line on
stderr and exit status 2; a diverged run (NaN/inf loss) ends the same way with status 1.
"""

import os
import sys
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from simsiam_jax import cli, config_validation

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for summaries and checkpoints.')
flags.DEFINE_bool('distributed', os.environ.get('SIMSIAM_DISTRIBUTED') == '1',
                  'Call jax.distributed.initialize() first (multi-host runs). '
                  'Also on when the environment sets SIMSIAM_DISTRIBUTED=1.')
config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                lock_config=True)


def initialize_distributed():
  """Joins the multi-host job. TPU pods and SLURM are detected by JAX itself; elsewhere the
  launcher sets JAX_COORDINATOR_ADDRESS (read by JAX), JAX_NUM_PROCESSES and JAX_PROCESS_ID."""
  kwargs = {name: int(os.environ[var]) for name, var in
            (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID'))
            if var in os.environ}
  jax.distributed.initialize(**kwargs)


def main(argv):
  cli.quiet_library_output()
  started = time.monotonic()
  with cli.exit_on_error():
    cli.check_no_arguments(argv)
    if FLAGS.config is None:
      raise app.UsageError('--config is required, e.g. --config=configs/default.py')
    # Only once the flags are good: --help and a mistake in them answer in 3 s instead of 8,
    # without loading TensorFlow (quietly: its C++ start-up notices stay out of the log).
    cli.import_tensorflow_quietly()
    from simsiam_jax import modes, reporting  # pylint: disable=g-import-not-at-top
    from simsiam_jax.scale import pod_plan  # pylint: disable=g-import-not-at-top
    if FLAGS.config.dry_run:
      # Before anything starts JAX's backend: the plan's fake devices.
      config_validation.validate_mode(FLAGS.config)
      pod_plan.prepare_backend(FLAGS.config.pod_plan)
    elif FLAGS.distributed:
      initialize_distributed()
    logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
                 jax.process_count(), jax.local_devices())
    result = modes.run(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    overrides = [arg for arg in sys.argv[1:] if arg.startswith('--config.') and '=' in arg]
    print(reporting.closing_summary(FLAGS.config, FLAGS.workdir, result,
                                    time.monotonic() - started,
                                    config_flags.get_config_filename(FLAGS['config']),
                                    overrides), flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
