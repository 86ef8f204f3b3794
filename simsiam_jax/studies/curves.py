"""Training curves of runs (loss, z-std, kNN top-1 against epochs), read from their
TensorBoard summaries and plotted in the style of the paper's Fig. 2:

  python -m simsiam_jax.studies.curves --workdirs=/tmp/run_a,/tmp/run_b --labels=a,b --out=fig.png
"""

import math

import matplotlib
from absl import app, flags

from simsiam_jax import cli

# Before the modules below load TensorFlow: its C++ start-up notices stay out of the log.
cli.import_tensorflow_quietly()

from simsiam_jax import checkpointing, reporting  # pylint: disable=wrong-import-position
from simsiam_jax.data import input_pipeline  # pylint: disable=wrong-import-position

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

TAGS = ('loss', 'z_std', 'z_std_target', 'knn_top1')
_TITLES = {'loss': 'training loss', 'z_std': 'std of l2-normalised z',
           'knn_top1': 'kNN top-1 (%)'}


def read_curves(workdir: str, steps_per_epoch: int | None = None
                ) -> dict[str, dict[float, float]]:
  """{tag: {epoch: value}} of the run in `workdir`; without `steps_per_epoch`, the run's
  config is read from its checkpoint to find it."""
  if steps_per_epoch is None:
    config = checkpointing.restore_config(workdir)
    steps_per_epoch = input_pipeline.pretrain_steps_per_epoch(config)
  scalars = reporting.read_scalars(workdir)
  return {tag: {step / steps_per_epoch: value for step, value in scalars.get(tag, {}).items()}
          for tag in TAGS}


def last(curve: dict[float, float]) -> float:
  return curve[max(curve)] if curve else math.nan


def plot_curves(curves_by_label: dict[str, dict], path: str):
  """One panel each for loss, z-std (with 1/sqrt(d) dashed) and kNN top-1."""
  figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for label, curves in curves_by_label.items():
    for axis, tag in zip(axes, _TITLES):
      epochs = sorted(curves[tag])
      axis.plot(epochs, [curves[tag][e] for e in epochs], label=label,
                marker='o' if tag == 'knn_top1' else None)
  targets = [last(c['z_std_target']) for c in curves_by_label.values() if c['z_std_target']]
  if targets:
    axes[1].axhline(targets[0], color='gray', linestyle='--', label='1/sqrt(d)')
  for axis, title in zip(axes, _TITLES.values()):
    axis.set_xlabel('epoch')
    axis.set_title(title)
    axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


FLAGS = flags.FLAGS
flags.DEFINE_list('workdirs', None, 'Workdirs of pretraining runs.')
flags.DEFINE_list('labels', None, 'A legend label per workdir (default: the workdirs).')
flags.DEFINE_string('out', 'curves.png', 'PNG file to write.')


def main(argv):
  cli.quiet_library_output()
  with cli.exit_on_error():
    cli.check_no_arguments(argv)
    labels = FLAGS.labels or FLAGS.workdirs
    if len(labels) != len(FLAGS.workdirs):
      raise app.UsageError('--labels needs one label per workdir')
    curves = {label: read_curves(w) for label, w in zip(labels, FLAGS.workdirs)}
    plot_curves(curves, FLAGS.out)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdirs')
  app.run(main, flags_parser=cli.parse_flags)
