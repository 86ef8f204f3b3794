"""Progress lines, TensorBoard summaries, and the collapse and non-finite monitors."""

import collections
import glob
import math
import os
import struct
import time

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from clu import metric_writers
from tensorflow.core.util import event_pb2

from simsiam_jax import checkpointing, methods


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
  if config.dry_run:
    rows += [('plan', f'{len(result["rows"])} TPU slices compiled; nothing was trained'),
             ('results', result['path'])]
  elif config.mode == 'pretrain':
    step, total = result['step'], result['total_steps']
    status = 'finished' if step == total else 'stopped early; rerun the same command to resume'
    rows.append(('steps', f'{result["start_step"] + 1}-{step} of {total} ({status})'
                 if step > result['start_step'] else f'none: all {total} were done before'))
    if 'loss' in result:
      minimum = ' (-1 is the minimum)' if config.method == 'simsiam' else ''
      rows.append(('final loss', f'{result["loss"]:.4f}{minimum}'))
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
  elif result['step'] < result['total_steps']:
    rows += [('steps', f'stopped at {result["step"]} of {result["total_steps"]}; rerun the '
              'same command to resume'),
             ('checkpoints', str(checkpointing.checkpoint_dir(workdir)))]
  else:
    rows += [('linear top-1', f'{result["top1"]:.2f}% (top-5 {result["top5"]:.2f}%) on '
              f'{config.data.eval_split}, {result["mode"]}; best {result["best_top1"]:.2f}% '
              f'at epoch {result["best_epoch"]:g}'),
             ('results', os.path.join(workdir, 'linear_eval.json')),
             ('TensorBoard', f'tensorboard --logdir={workdir}'),
             ('next: export', f'python -m simsiam_jax.convert --config={config_file} '
              f'--workdir={config.pretrained_workdir} --export_torchvision=resnet.pth')]
  width = max(len(name) for name, _ in rows)
  title = {'pretrain': f'{methods.get(config.method).TITLE} pretraining', 'knn': 'kNN evaluation',
           'linear_eval': 'Linear evaluation'}[config.mode]
  return '\n'.join([f'== {title} of {workdir} =='] +
                   [f'{name:<{width}}  {value}' for name, value in rows])
