"""The paper's ablations at small scale, one command:

  python -m simsiam_jax.ablations --config=configs/cifar10_cpu.py --workdir=/tmp/ablations \
      [--variants=default,no_stop_gradient] [--config.num_epochs=3]

Pretrains the chosen variants for the same budget (the config's), each in `workdir/<variant>`
(rerunning resumes or skips finished variants), then writes `workdir/ablations.md` (variant,
final loss, z-std, kNN top-1, training minutes) and `workdir/stop_gradient.png`, the paper's
Fig. 2 (training loss, z-std and kNN accuracy against epochs, with and without
stop-gradient). Both cover every variant in `workdir`, so the variants can be run a few at a
time.
"""

import os

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from simsiam_jax import checkpointing, config_validation, curves, input_pipeline, reporting
from simsiam_jax import train

# Variant name -> (paper reference, config overrides).
VARIANTS = {
    'default': ('Sec. 4 baseline', {}),
    'no_stop_gradient': ('Fig. 2', {'stop_gradient': False}),
    'no_predictor': ('Table 1a', {'model.predictor': 'none'}),
    'fixed_random_predictor': ('Table 1b', {'model.predictor': 'fixed_random'}),
    'decayed_predictor_lr': ('Table 1c', {'fixed_predictor_lr': False}),
    'no_bn_in_heads': ('Table 3a', {'model.head_batch_norm': 'none'}),
    'bn_hidden_only': ('Table 3b', {'model.head_batch_norm': 'hidden'}),
    'bn_everywhere': ('Table 3d', {'model.head_batch_norm': 'all'}),
    'cross_entropy': ('Sec. 4.5', {'similarity': 'cross_entropy'}),
    'asymmetric': ('Sec. 4.6', {'loss_symmetry': 'asymmetric'}),
    'asymmetric_2x': ('Sec. 4.6', {'loss_symmetry': 'asymmetric_2x'}),
    'half_batch': ('Table 2', {'batch_size': 0.5}),
}

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for one sub-directory per variant and the report.')
flags.DEFINE_list('variants', list(VARIANTS), f'Variants to run, of: {", ".join(VARIANTS)}.')
config_flags.DEFINE_config_file('config', None, 'Base configuration of every variant.',
                                lock_config=True)


def variant_config(base: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`base` with the variant's overrides; 'half_batch' halves the batch (lr scales along)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field, value in VARIANTS[name][1].items():
    *parents, leaf = field.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = int(target[leaf] * value) if field == 'batch_size' else value
  return config


def markdown_table(results: dict[str, dict]) -> str:
  lines = ['| variant | paper | final loss | z-std (1/sqrt(d)) | kNN top-1 (%) | minutes | note |',
           '|---|---|---|---|---|---|---|']
  for name, result in results.items():
    c = result['curves']
    lines.append(f'| {name} | {VARIANTS[name][0]} | {curves.last(c["loss"]):.3f} | '
                 f'{curves.last(c["z_std"]):.4f} ({curves.last(c["z_std_target"]):.4f}) | '
                 f'{curves.last(c["knn_top1"]):.1f} | {result["minutes"]:.1f} | {result["note"]} |')
  return '\n'.join(lines) + '\n'


def plot_stop_gradient(results: dict[str, dict], path: str):
  """The paper's Fig. 2: loss, z-std and kNN top-1 per epoch, with/without stop-gradient."""
  curves.plot_curves({label: results[name]['curves'] for name, label in
                      (('default', 'w/ stop-grad'), ('no_stop_gradient', 'w/o stop-grad'))
                      if name in results}, path)


def run_variants(base: ml_collections.ConfigDict, workdir: str, names: list[str]):
  """Pretrains each variant in `workdir/<name>`; a diverging variant stops, the others go on."""
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise config_validation.ConfigError(
        f'--variants: unknown {", ".join(unknown)}; choose from {", ".join(VARIANTS)}')
  os.makedirs(workdir, exist_ok=True)
  for name in names:
    logging.info('Ablation variant %s (%s): %s', name, VARIANTS[name][0], VARIANTS[name][1])
    try:
      train.train_and_evaluate(variant_config(base, name), os.path.join(workdir, name))
    except checkpointing.NonFiniteLossError as e:
      logging.warning('Variant %s diverged: %s', name, e)


def collect_results(base: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """{variant: curves, training minutes and a note} of every variant run in `workdir`, in
  the order of VARIANTS; the minutes are those between the run's first and last summaries
  (summed over resumptions), and the note says if it stopped before its last epoch."""
  results = {}
  for name in VARIANTS:
    variant_dir = os.path.join(workdir, name)
    if not os.path.isdir(variant_dir):
      continue
    config = variant_config(base, name)
    steps_per_epoch = input_pipeline.pretrain_steps_per_epoch(config)
    run_curves = curves.read_curves(variant_dir, steps_per_epoch)
    epochs = max(run_curves['loss'], default=0.0)
    note = '' if epochs >= config.num_epochs else (
        f'stopped at epoch {epochs:.2f} of {config.num_epochs}')
    results[name] = {'curves': run_curves, 'note': note,
                     'minutes': reporting.summary_seconds(variant_dir) / 60}
  return results


def main(argv):
  reporting.quiet_library_logs()
  with reporting.exit_on_error():
    reporting.check_no_arguments(argv)
    config_validation.validate_workdir(FLAGS.workdir)
    run_variants(FLAGS.config, FLAGS.workdir, FLAGS.variants)
    results = collect_results(FLAGS.config, FLAGS.workdir)
  table = markdown_table(results)
  with open(os.path.join(FLAGS.workdir, 'ablations.md'), 'w') as f:
    f.write(table)
  plot_stop_gradient(results, os.path.join(FLAGS.workdir, 'stop_gradient.png'))
  print(table)


if __name__ == '__main__':
  app.run(main, flags_parser=reporting.parse_flags)
