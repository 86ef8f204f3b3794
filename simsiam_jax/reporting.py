"""Progress lines, TensorBoard summaries, and the collapse and non-finite monitors."""

import collections
import contextlib
import glob
import logging as std_logging
import math
import os
import struct
import sys
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from clu import metric_writers
from ml_collections import config_flags
from tensorflow.core.util import event_pb2

from simsiam_jax import checkpointing, config_validation, datasets
from simsiam_jax import workdir as workdir_lib
from simsiam_jax.models import torchvision_format


def create_summary_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard summaries in `workdir` from process 0; the other processes write nothing.

  Progress goes to the log through `ProgressReporter`, so the writer does not log too.
  """
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))


def _event_files(workdir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*')))


def _events(path: str):
  """The events of a TensorBoard event file (TFRecord framing, read here in Python: through
  tf.data, TensorFlow logs a notice about its read buffer). A record cut short by a killed
  writer ends the file."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    while len(header := f.read(12)) == 12:  # uint64 length, uint32 CRC of the length.
      length, = struct.unpack('<Q', header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:  # The data and their CRC.
        return
      yield event_pb2.Event.FromString(data)


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of the scalar summaries in `workdir`, read in one pass; later
  event files (a resumed run) win."""
  values = collections.defaultdict(dict)
  for path in _event_files(workdir):
    for event in _events(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'scalars':
          values[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
  return dict(values)


def summary_seconds(workdir: str) -> float:
  """Seconds from the first to the last summary of each event file in `workdir`, summed:
  the time a run spent, resumptions included, without the time it was stopped."""
  total = 0.0
  for path in _event_files(workdir):
    wall_times = [event.wall_time for event in _events(path)]
    if wall_times:
      total += max(wall_times) - min(wall_times)
  return total


# Libraries whose INFO lines say nothing a user can act on: orbax logs several per
# checkpoint, JAX one per accelerator backend it looked for and did not find (libtpu on every
# CPU or GPU host).
_QUIET_LIBRARY_PATHS = ('/orbax/', '/jax/_src/xla_bridge.py')
# Warnings that are expected here: evaluation opens checkpoints read-only on purpose.
_EXPECTED_WARNINGS = ('Given directory is read only',)


class _DropInfoFromLibraries(std_logging.Filter):
  """Keeps only the warnings and errors of `_QUIET_LIBRARY_PATHS`, less the expected ones."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not any(path in record.pathname for path in _QUIET_LIBRARY_PATHS):
      return True
    return (record.levelno >= std_logging.WARNING and
            not str(record.msg).startswith(_EXPECTED_WARNINGS))


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_DropInfoFromLibraries())


@contextlib.contextmanager
def exit_on_error():
  """For the command-line tools: a mistake in the config, the flags, the data or the
  checkpoints ends as one `error:` line on stderr and exit status 2, a diverged run (NaN/inf
  loss) as one with status 1, never as a traceback."""
  try:
    yield
  except (app.UsageError, config_validation.ConfigError, datasets.DataError,
          checkpointing.CheckpointError, torchvision_format.TorchFormatError,
          workdir_lib.WorkdirError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except checkpointing.NonFiniteLossError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def check_no_arguments(argv: list[str]):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a bad flag, a
  config file that is missing or does not load, or a --config.* override of the wrong type
  or of no field ends as one `error:` line and exit status 2, as the other mistakes do."""
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      path = config_flags.get_config_filename(flags.FLAGS['config'])
      if not os.path.isfile(path):
        raise ValueError(f'--config={path}: no such file')
      flags.FLAGS['config'].value  # Loads the file now, not half-way into the run.
    return remaining
  except (AttributeError, KeyError) as e:  # An override of a field the config lacks.
    key = str(e).strip('"\' ')
    names = [arg.split('=')[0] for arg in argv if arg.startswith('--config.')]
    name = next((n for n in names if key in n.split('.')), f'--config.{key}')
    message = f'{name}: the config has no such field'
  except Exception as e:  # pylint: disable=broad-except
    # Any other failure here is the command line's or the config file's; absl's and
    # ml_collections' messages span several lines (a config file's traceback included).
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    message = ' '.join(lines)[:500] or type(e).__name__
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


class ProgressReporter:
  """Averages the metrics of a window of steps; logs a progress line and writes summaries.

  Also the collapse monitor (a warning when z-std stays under a fraction of 1/sqrt(d) for a
  whole window) and the non-finite guard (an error naming the first bad step).
  """

  def __init__(self, writer: metric_writers.MetricWriter, *, total_steps: int,
               steps_per_epoch: int, z_std_target: float, collapse_fraction: float):
    self._writer = writer
    self._total_steps = total_steps
    self._steps_per_epoch = steps_per_epoch
    self._z_std_target = z_std_target
    self._collapse_threshold = collapse_fraction * z_std_target
    self._window: list[tuple[int, dict[str, jax.Array]]] = []
    self._window_started = 0.0

  def add(self, step: int, metrics: dict[str, jax.Array]):
    if not self._window:
      self._window_started = time.perf_counter()
    self._window.append((step, metrics))

  def report(self) -> dict[str, float]:
    """Blocks on the window's metrics (the device is then idle until the next step)."""
    window = jax.device_get(self._window)
    for step, metrics in window:
      checkpointing.check_finite(step, metrics)
    step = window[-1][0]
    summary = {name: float(np.mean([m[name] for _, m in window])) for name in window[0][1]}
    # The first step of a window was dispatched before the clock started.
    steps_per_sec = (len(window) - 1) / max(time.perf_counter() - self._window_started, 1e-9)
    self._window = []
    eta = (self._total_steps - step) / steps_per_sec if steps_per_sec else float('nan')
    logging.info(
        'step %d/%d (epoch %.2f) loss %.4f z-std %.4f (1/sqrt(d)=%.4f) lr %.4g | '
        '%.2f steps/s, ETA %s', step, self._total_steps, step / self._steps_per_epoch,
        summary['loss'], summary['z_std'], self._z_std_target, summary['learning_rate'],
        steps_per_sec, format_duration(eta) if math.isfinite(eta) else '?')
    if max(m['z_std'] for _, m in window) < self._collapse_threshold:
      logging.warning('Representation collapsing: z-std %.4f stayed below %.4f (%.0f%% of '
                      '1/sqrt(d)) for steps %d-%d.', summary['z_std'], self._collapse_threshold,
                      100 * self._collapse_threshold / self._z_std_target, window[0][0], step)
    self._writer.write_scalars(step, {**summary, 'steps_per_sec': steps_per_sec,
                                      'z_std_target': self._z_std_target})
    return summary


def _command(config_file: str, workdir: str, overrides: list[str], *extra: str) -> str:
  return ' '.join(['python -m simsiam_jax.main', f'--config={config_file}',
                   f'--workdir={workdir}', *overrides, *extra])


def closing_summary(config: ml_collections.ConfigDict, workdir: str, result: dict,
                    seconds: float, config_file: str, overrides: list[str]) -> str:
  """The block a command ends with: what the run did, where its outputs are, what to run next.

  `overrides` are the command's --config.* flags, carried into the next command.
  """
  overrides = [o for o in overrides
               if not o.startswith(('--config.mode=', '--config.pretrained_workdir='))]
  rows = [('wall time', format_duration(seconds))]
  if config.mode == 'pretrain':
    step, total = result['step'], result['total_steps']
    status = 'finished' if step == total else 'stopped early; rerun the same command to resume'
    rows.append(('steps', f'{result["start_step"] + 1}-{step} of {total} ({status})'
                 if step > result['start_step'] else f'none: all {total} were done before'))
    if 'loss' in result:
      rows.append(('final loss', f'{result["loss"]:.4f} (-1 is the minimum)'))
      ratio = result['z_std'] / result['z_std_target']
      rows.append(('z-std', f'{result["z_std"]:.4f} against 1/sqrt(d) = '
                   f'{result["z_std_target"]:.4f} ({ratio:.0%}; near 0 means collapse)'))
    knn = read_scalars(workdir).get('knn_top1', {})
    if knn:
      first, last = min(knn), max(knn)
      rows.append(('kNN top-1', f'{knn[first]:.2f}% (step {first}) -> {knn[last]:.2f}% '
                   f'(step {last}), {knn[last] - knn[first]:+.2f} points'))
    rows += [('checkpoints', str(checkpointing.checkpoint_dir(workdir))),
             ('TensorBoard', f'tensorboard --logdir={workdir}'),
             ('next: kNN', _command(config_file, f'{workdir}_knn', overrides,
                                    '--config.mode=knn', f'--config.pretrained_workdir={workdir}')),
             ('next: linear', _command(config_file, f'{workdir}_linear', overrides,
                                       '--config.mode=linear_eval',
                                       f'--config.pretrained_workdir={workdir}'))]
  elif config.mode == 'knn':
    rows += [('kNN top-1', f'{result["knn_top1"]:.2f}% on {config.data.eval_split} '
              f'(k={config.evals.knn.k}, T={config.evals.knn.temperature:g})'),
             ('results', os.path.join(workdir, 'knn_eval.json')),
             ('next: linear', _command(config_file, f'{workdir}_linear', overrides,
                                       '--config.mode=linear_eval',
                                       f'--config.pretrained_workdir={config.pretrained_workdir}'))]
  else:
    rows += [('linear top-1', f'{result["top1"]:.2f}% (top-5 {result["top5"]:.2f}%) on '
              f'{config.data.eval_split}, {result["mode"]}; best {result["best_top1"]:.2f}% '
              f'at epoch {result["best_epoch"]:g}'),
             ('results', os.path.join(workdir, 'linear_eval.json')),
             ('TensorBoard', f'tensorboard --logdir={workdir}'),
             ('next: export', f'python -m simsiam_jax.convert --config={config_file} '
              f'--workdir={config.pretrained_workdir} --export_torchvision=resnet.pth')]
  width = max(len(name) for name, _ in rows)
  title = {'pretrain': 'SimSiam pretraining', 'knn': 'kNN evaluation',
           'linear_eval': 'Linear evaluation'}[config.mode]
  return '\n'.join([f'== {title} of {workdir} =='] +
                   [f'{name:<{width}}  {value}' for name, value in rows])
