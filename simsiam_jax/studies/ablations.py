"""The paper's experiments at small scale, one command per study:

  python -m simsiam_jax.studies.ablations --config=configs/cifar10_cpu.py --workdir=/tmp/ablations \
      [--study=ablations|em|table4] [--variants=default,no_stop_gradient] \
      [--config.num_epochs=3]

Studies: 'ablations' (Fig. 2, Tables 1-3, Sec. 4.5-4.6), 'em' (Sec. 5: k-step
alternation and the moving-average memory bank, beside the default's seed spread) and
'table4' (Table 4: SimSiam against SimCLR, MoCo v2, BYOL and SwAV on the same backbone,
data, augmentations, batch and budget).
Pretrains the chosen variants of the study for the same budget (the config's), each in
`workdir/<variant>` (rerunning resumes or skips finished variants), then writes
`workdir/<study>.md` (variant, the paper's reference, final loss, z-std, kNN top-1, training
minutes, the train step's memory per device) and a figure of the curves against epochs:
`stop_gradient.png`, the paper's Fig. 2 (with and without stop-gradient), `em.png` or
`table4.png` (every variant). Both cover every variant of the study in `workdir`, so the
variants can be run a few at a time.
"""

import os

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from simsiam_jax import cli

# Before the modules below load TensorFlow: its C++ start-up notices stay out of the log.
cli.import_tensorflow_quietly()

from simsiam_jax import checkpointing, config_validation, reporting, train  # pylint: disable=wrong-import-position
from simsiam_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position
from simsiam_jax.data import input_pipeline  # pylint: disable=wrong-import-position
from simsiam_jax.studies import curves  # pylint: disable=wrong-import-position

# Study -> variant name -> (paper reference, config overrides).
ABLATIONS = {
    'default': ('Sec. 4 baseline', {}),
    'no_stop_gradient': ('Fig. 2', {'stop_gradient': False}),
    'no_predictor': ('Table 1a', {'model.predictor': 'none'}),
    'fixed_random_predictor': ('Table 1b', {'model.predictor': 'fixed_random'}),
    'decayed_predictor_lr': ('Table 1c', {'optim.fixed_predictor_lr': False}),
    'no_bn_in_heads': ('Table 3a', {'model.head_batch_norm': 'none'}),
    'bn_hidden_only': ('Table 3b', {'model.head_batch_norm': 'hidden'}),
    'bn_everywhere': ('Table 3d', {'model.head_batch_norm': 'all'}),
    'cross_entropy': ('Sec. 4.5', {'similarity': 'cross_entropy'}),
    'asymmetric': ('Sec. 4.6', {'loss_symmetry': 'asymmetric'}),
    'asymmetric_2x': ('Sec. 4.6', {'loss_symmetry': 'asymmetric_2x'}),
    'half_batch': ('Table 2', {'batch_size': 0.5}),
}
# Paper Sec. 5, ImageNet linear top-1 after 100 epochs. 1-step is SimSiam (tests prove
# k_step with k = 1 equal to it bit for bit, so 'simsiam' runs without the target copy).
_K_STEP = {'simsiam.target': 'k_step'}
EM = {
    'simsiam': ('1-step (SimSiam): 68.1', {}),
    'seed_1': ('seed spread of simsiam', {'seed': 1}),
    'seed_2': ('seed spread of simsiam', {'seed': 2}),
    'k_10': ('10-step: 68.7', {**_K_STEP, 'simsiam.target_refresh_steps': 10}),
    'k_100': ('100-step: 68.9', {**_K_STEP, 'simsiam.target_refresh_steps': 100}),
    'k_1_epoch': ('1-epoch: 67.0', {**_K_STEP, 'simsiam.target_refresh_epochs': 1.0}),
    'memory_bank': ('moving average m=0.8, no predictor: 55.0',
                    {'simsiam.target': 'memory_bank', 'model.predictor': 'none'}),
}
# Paper Table 4: ImageNet linear top-1 after 100 / 200 / 400 / 800 epochs. Each method runs
# with its config.<method> defaults on the base config's backbone, data and optimizer.
TABLE4 = {
    'simsiam': ('68.1 / 70.0 / 70.8 / 71.3', {}),
    'seed_1': ('seed spread of simsiam', {'seed': 1}),
    'seed_2': ('seed spread of simsiam', {'seed': 2}),
    'simclr': ('66.5 / 68.3 / 69.8 / 70.4', {'method': 'simclr'}),
    'moco_v2': ('67.4 / 69.9 / 71.0 / 72.2', {'method': 'moco_v2'}),
    'byol': ('66.5 / 70.6 / 73.2 / 74.3', {'method': 'byol'}),
    'swav': ('66.5 / 69.1 / 70.7 / 71.8', {'method': 'swav'}),
    # The paper runs SimCLR and BYOL at batch 4096 (Table 4's note); what a CPU affords is
    # their trend from half the batch to the base config's, beside SimSiam's.
    'simsiam_half_batch': ('batch trend', {'batch_size': 0.5}),
    'simclr_half_batch': ('batch trend', {'method': 'simclr', 'batch_size': 0.5}),
    'byol_half_batch': ('batch trend', {'method': 'byol', 'batch_size': 0.5}),
}
STUDIES = {'ablations': ABLATIONS, 'em': EM, 'table4': TABLE4}
# Study -> (figure file, {variant: legend label}, or None for every variant).
FIGURES = {'ablations': ('stop_gradient.png', {'default': 'w/ stop-grad',
                                               'no_stop_gradient': 'w/o stop-grad'}),
           'em': ('em.png', None), 'table4': ('table4.png', None)}

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for one sub-directory per variant and the report.')
flags.DEFINE_enum('study', 'ablations', list(STUDIES), 'Which experiments to run.')
flags.DEFINE_list('variants', None, 'Variants of the study to run (default: all). Ablations: '
                  f'{", ".join(ABLATIONS)}. EM: {", ".join(EM)}. Table 4: {", ".join(TABLE4)}.')
config_flags.DEFINE_config_file('config', None, 'Base configuration of every variant.',
                                lock_config=True)


def variant_config(base: ml_collections.ConfigDict, name: str,
                   study: str = 'ablations') -> ml_collections.ConfigDict:
  """`base` with the variant's overrides; 'half_batch' halves the batch (lr scales along)."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field, value in STUDIES[study][name][1].items():
    *parents, leaf = field.split('.')
    target = config
    for parent in parents:
      target = target[parent]
    target[leaf] = int(target[leaf] * value) if field == 'batch_size' else value
  return config


def markdown_table(results: dict[str, dict], study: str = 'ablations') -> str:
  lines = ['| variant | paper | final loss | z-std (1/sqrt(d)) | kNN top-1 (%) | minutes | '
           'step memory (MiB) | note |', '|---|---|---|---|---|---|---|---|']
  for name, result in results.items():
    c = result['curves']
    memory = result.get('memory_mib')
    lines.append(f'| {name} | {STUDIES[study][name][0]} | {curves.last(c["loss"]):.3f} | '
                 f'{curves.last(c["z_std"]):.4f} ({curves.last(c["z_std_target"]):.4f}) | '
                 f'{curves.last(c["knn_top1"]):.1f} | {result["minutes"]:.1f} | '
                 f'{"" if memory is None else f"{memory:.0f}"} | {result["note"]} |')
  spread = seed_spread(results, study)
  if spread:
    lines.append(f'\nkNN top-1 of {spread["variant"]} over seeds {spread["seeds"]}: mean '
                 f'{spread["mean"]:.2f}, std {spread["std"]:.2f}, range {spread["min"]:.2f}-'
                 f'{spread["max"]:.2f}.')
  return '\n'.join(lines) + '\n'


def seed_spread(results: dict[str, dict], study: str) -> dict | None:
  """kNN top-1 statistics of the study's first variant and its reseeded copies (variants
  that override only the seed), or None without at least one copy."""
  variants = STUDIES[study]
  base = next(iter(variants))
  copies = [name for name, (_, overrides) in variants.items() if list(overrides) == ['seed']]
  names = [name for name in [base, *copies] if name in results]
  if base not in names or len(names) < 2:
    return None
  top1 = np.array([curves.last(results[name]['curves']['knn_top1']) for name in names])
  seeds = [variants[name][1].get('seed', 'base') for name in names]
  return {'variant': base, 'seeds': ', '.join(map(str, seeds)), 'mean': top1.mean(),
          'std': top1.std(ddof=1), 'min': top1.min(), 'max': top1.max()}


def plot_study(results: dict[str, dict], workdir: str, study: str = 'ablations') -> str:
  """The study's figure (loss, z-std and kNN top-1 per epoch) in `workdir`; its path."""
  filename, labels = FIGURES[study]
  labels = labels or {name: name for name in results}
  path = os.path.join(workdir, filename)
  curves.plot_curves({label: results[name]['curves'] for name, label in labels.items()
                      if name in results}, path)
  return path


def run_variants(base: ml_collections.ConfigDict, workdir: str, names: list[str],
                 study: str = 'ablations'):
  """Pretrains each variant in `workdir/<name>`; a diverging variant stops, the others go on.
  A preempted variant (SIGTERM) stops the study: rerunning resumes it, then the others."""
  variants = STUDIES[study]
  unknown = [n for n in names if n not in variants]
  if unknown:
    raise config_validation.ConfigError(
        f'--variants: unknown {", ".join(unknown)} in the {study} study; choose from '
        f'{", ".join(variants)}')
  os.makedirs(workdir, exist_ok=True)
  for name in names:
    logging.info('Variant %s (%s): %s', name, variants[name][0], variants[name][1])
    try:
      summary = train.train_and_evaluate(variant_config(base, name, study),
                                         os.path.join(workdir, name))
    except checkpointing.NonFiniteLossError as e:
      logging.warning('Variant %s diverged: %s', name, e)
      continue
    if summary['step'] < summary['total_steps']:
      logging.warning('Study stopped at variant %s (preempted); rerun the same command to '
                      'resume.', name)
      return


def collect_results(base: ml_collections.ConfigDict, workdir: str,
                    study: str = 'ablations') -> dict[str, dict]:
  """{variant: curves, training minutes, the step's memory per device and a note} of every
  variant run in `workdir`, in the order of the study; the minutes are those between the
  run's first and last summaries (summed over resumptions), the memory is XLA's analysis of
  the compiled step (train.step_memory_mib), and the note says if it stopped before its last
  epoch."""
  results = {}
  for name in STUDIES[study]:
    variant_dir = os.path.join(workdir, name)
    if not os.path.isdir(variant_dir):
      continue
    config = variant_config(base, name, study)
    steps_per_epoch = input_pipeline.pretrain_steps_per_epoch(config)
    run_curves = curves.read_curves(variant_dir, steps_per_epoch)
    epochs = max(run_curves['loss'], default=0.0)
    note = '' if epochs >= config.num_epochs else (
        f'stopped at epoch {epochs:.2f} of {config.num_epochs}')
    memory = reporting.read_scalars(variant_dir).get('train_step_memory_mib', {})
    results[name] = {'curves': run_curves, 'note': note,
                     'minutes': reporting.summary_seconds(variant_dir) / 60,
                     'memory_mib': memory[max(memory)] if memory else None}
  return results


def main(argv):
  cli.quiet_library_output()
  with cli.exit_on_error():
    cli.check_no_arguments(argv)
    workdir_lib.validate(FLAGS.workdir)
    study = FLAGS.study
    run_variants(FLAGS.config, FLAGS.workdir, FLAGS.variants or list(STUDIES[study]), study)
    results = collect_results(FLAGS.config, FLAGS.workdir, study)
  table = markdown_table(results, study)
  with open(os.path.join(FLAGS.workdir, f'{study}.md'), 'w') as f:
    f.write(table)
  plot_study(results, FLAGS.workdir, study)
  print(table)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
