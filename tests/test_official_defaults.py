"""Every default a method's ImageNet config takes from its official code, pinned to it.

Each row names a config field, the official value and where it comes from: the file of the
official repository (read at the commit in SOURCES) and the line that sets it, quoted. A
default changed in configs/ fails here with that source; one that differs on purpose is not
a row, and its config's docstring says why (crop scales, warmup start, MoCo's symmetric
loss). The EM variants and their expected figures come from the SimSiam paper (Sec. 5).
"""

import importlib
import math
import typing

import pytest

from simsiam_jax import optimizer
from simsiam_jax.data import input_pipeline
from simsiam_jax.methods import swav
from simsiam_jax.studies import ablations

SOURCES = {
    'simsiam': 'facebookresearch/simsiam@a7bc177',
    'moco': 'facebookresearch/moco@132aea9',
    'simclr': 'google-research/simclr@383d414',
    'byol': 'deepmind/deepmind-research@d8df415',
    'swav': 'facebookresearch/swav@06b1b7c',
    'paper': 'Chen & He, Exploring Simple Siamese Representation Learning, arXiv:2011.10566',
}


class Official(typing.NamedTuple):
  field: str
  value: object
  source: str  # 'repo path' with repo a key of SOURCES.
  quote: str


SIMSIAM = [
    Official('batch_size', 512, 'simsiam main_simsiam.py', "'-b', '--batch-size', default=512"),
    Official('num_epochs', 100, 'simsiam main_simsiam.py', "'--epochs', default=100"),
    Official('optim.optimizer', 'sgd', 'simsiam main_simsiam.py',
             'torch.optim.SGD(optim_params, init_lr, momentum=..., weight_decay=...)'),
    Official('optim.base_lr', 0.05, 'simsiam main_simsiam.py',
             "'--lr', default=0.05; init_lr = args.lr * args.batch_size / 256"),
    Official('optim.momentum', 0.9, 'simsiam main_simsiam.py', "'--momentum', default=0.9"),
    Official('optim.weight_decay', 1e-4, 'simsiam main_simsiam.py', "'--wd', default=1e-4"),
    Official('optim.lr_schedule', 'cosine_per_epoch', 'simsiam main_simsiam.py',
             'adjust_learning_rate(optimizer, init_lr, epoch, args) once per epoch'),
    Official('optim.warmup_epochs', 0, 'simsiam main_simsiam.py', 'no warmup'),
    Official('optim.fixed_predictor_lr', True, 'simsiam README.md', '--fix-pred-lr'),
    Official('model.projector_layers', 3, 'simsiam simsiam/builder.py',
             'self.encoder.fc = nn.Sequential(3 Linear layers)'),
    Official('model.projector_hidden_dim', 2048, 'simsiam simsiam/builder.py',
             'prev_dim = self.encoder.fc.weight.shape[1]'),
    Official('model.projector_dim', 2048, 'simsiam main_simsiam.py', "'--dim', default=2048"),
    Official('model.predictor_hidden_dim', 512, 'simsiam main_simsiam.py',
             "'--pred-dim', default=512"),
    Official('aug.crop_scale', (0.2, 1.0), 'simsiam main_simsiam.py',
             'transforms.RandomResizedCrop(224, scale=(0.2, 1.))'),
    Official('aug.brightness', 0.4, 'simsiam main_simsiam.py',
             'transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)'),
    Official('aug.contrast', 0.4, 'simsiam main_simsiam.py',
             'transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)'),
    Official('aug.saturation', 0.4, 'simsiam main_simsiam.py',
             'transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)'),
    Official('aug.hue', 0.1, 'simsiam main_simsiam.py',
             'transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)'),
    Official('aug.color_jitter_prob', 0.8, 'simsiam main_simsiam.py',
             'transforms.RandomApply([ColorJitter(...)], p=0.8)'),
    Official('aug.grayscale_prob', 0.2, 'simsiam main_simsiam.py',
             'transforms.RandomGrayscale(p=0.2)'),
    Official('aug.blur_prob', 0.5, 'simsiam main_simsiam.py',
             'transforms.RandomApply([GaussianBlur([.1, 2.])], p=0.5)'),
    Official('aug.blur_sigma', (0.1, 2.0), 'simsiam main_simsiam.py',
             'simsiam.loader.GaussianBlur([.1, 2.])'),
    Official('aug.flip_prob', 0.5, 'simsiam main_simsiam.py',
             'transforms.RandomHorizontalFlip()'),
    Official('data.mean', (0.485, 0.456, 0.406), 'simsiam main_simsiam.py',
             'transforms.Normalize(mean=[0.485, 0.456, 0.406], ...)'),
    Official('data.std', (0.229, 0.224, 0.225), 'simsiam main_simsiam.py',
             'transforms.Normalize(..., std=[0.229, 0.224, 0.225])'),
]

LINEAR = [
    Official('linear.batch_size', 4096, 'simsiam main_lincls.py',
             "'-b', '--batch-size', default=4096"),
    Official('linear.num_epochs', 90, 'simsiam main_lincls.py', "'--epochs', default=90"),
    Official('linear.base_lr', 0.1, 'simsiam main_lincls.py',
             "'--lr', default=0.1; init_lr = args.lr * args.batch_size / 256"),
    Official('linear.momentum', 0.9, 'simsiam main_lincls.py', "'--momentum', default=0.9"),
    Official('linear.weight_decay', 0.0, 'simsiam main_lincls.py', "'--wd', default=0."),
    Official('linear.lr_schedule', 'cosine_per_epoch', 'simsiam main_lincls.py',
             'adjust_learning_rate(optimizer, init_lr, epoch, args) once per epoch'),
    Official('linear.crop_scale', (0.08, 1.0), 'simsiam main_lincls.py',
             'transforms.RandomResizedCrop(224) (torchvision default scale=(0.08, 1.0))'),
    Official('data.eval_crop_fraction', 0.875, 'simsiam main_lincls.py',
             'transforms.Resize(256), transforms.CenterCrop(224)'),
]

MOCO_V2 = [
    Official('batch_size', 256, 'moco main_moco.py', '"--batch-size", default=256'),
    Official('optim.optimizer', 'sgd', 'moco main_moco.py', 'torch.optim.SGD(...)'),
    Official('optim.base_lr', 0.03, 'moco main_moco.py', '"--lr", default=0.03'),
    Official('optim.momentum', 0.9, 'moco main_moco.py', '"--momentum", default=0.9'),
    Official('optim.weight_decay', 1e-4, 'moco main_moco.py', '"--wd", default=1e-4'),
    Official('optim.lr_schedule', 'cosine_per_epoch', 'moco main_moco.py',
             '--cos: adjust_learning_rate once per epoch'),
    Official('moco_v2.momentum', 0.999, 'moco main_moco.py', '"--moco-m", default=0.999'),
    Official('moco_v2.queue_size', 65_536, 'moco main_moco.py', '"--moco-k", default=65536'),
    Official('moco_v2.temperature', 0.2, 'moco README.md',
             'To run MoCo v2, set `--mlp --moco-t 0.2 --aug-plus --cos`'),
    Official('model.projector_dim', 128, 'moco main_moco.py', '"--moco-dim", default=128'),
    Official('model.projector_hidden_dim', 2048, 'moco moco/builder.py',
             'nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_q.fc)'),
]

SIMCLR = [
    Official('batch_size', 4096, 'simclr README.md', '--train_batch_size=4096'),
    Official('optim.optimizer', 'simclr_lars', 'simclr tf2/run.py',
             "flags.DEFINE_enum('optimizer', 'lars', ...)"),
    Official('optim.base_lr', 0.3, 'simclr tf2/run.py',
             "'learning_rate', 0.3; 'learning_rate_scaling', 'linear'"),
    Official('optim.warmup_epochs', 10, 'simclr tf2/run.py', "'warmup_epochs', 10"),
    Official('optim.lr_schedule', 'cosine', 'simclr tf2/model.py',
             'WarmUpAndCosineDecay: CosineDecay(scaled_lr, total_steps - warmup_steps)'),
    Official('optim.weight_decay', 1e-6, 'simclr tf2/run.py',
             "flags.DEFINE_float('weight_decay', 1e-6, ...) (README's sqrt-scaled command: 1e-4)"),
    Official('optim.momentum', 0.9, 'simclr tf2/run.py', "'momentum', 0.9"),
    Official('optim.lars_trust_coefficient', 0.001, 'simclr tf2/lars_optimizer.py',
             'EETA_DEFAULT = 0.001'),
    Official('simclr.temperature', 0.1, 'simclr tf2/run.py', "'temperature', 0.1"),
    Official('model.projector_dim', 128, 'simclr tf2/run.py', "'proj_out_dim', 128"),
]

BYOL = [
    Official('batch_size', 4096, 'byol byol/main_loop.py',
             "flags.DEFINE_integer('batch_size', 4096, 'Total batch size')"),
    Official('optim.optimizer', 'byol_lars', 'byol byol/byol_experiment.py',
             'optimizers.lars(learning_rate, weight_decay_filter=exclude_bias_and_norm, ...)'),
    Official('optim.base_lr', 0.45, 'byol byol/configs/byol.py',
             '_LR_PRESETS = {40: 0.45, 100: 0.45, ...}; scaled_lr = base * batch_size / 256.'),
    Official('optim.warmup_epochs', 10, 'byol byol/configs/byol.py',
             'warmup_steps=10 * train_images_per_epoch // batch_size'),
    Official('optim.lr_schedule', 'cosine', 'byol byol/utils/schedules.py',
             'learning_schedule: _cosine_decay(global_step - warmup_steps, ...) per step'),
    Official('optim.weight_decay', 1e-6, 'byol byol/configs/byol.py',
             '_WD_PRESETS = {40: 1e-6, 100: 1e-6, ...}'),
    Official('optim.momentum', 0.9, 'byol byol/configs/byol.py', 'momentum=.9'),
    Official('optim.lars_trust_coefficient', 0.001, 'byol byol/configs/byol.py', 'eta=1e-3'),
    Official('byol.tau_base', 0.99, 'byol byol/configs/byol.py',
             '_EMA_PRESETS = {40: 0.97, 100: 0.99, ...}'),
    Official('model.projector_hidden_dim', 4096, 'byol byol/configs/byol.py',
             'projector_hidden_size=4096'),
    Official('model.projector_dim', 256, 'byol byol/configs/byol.py',
             'projector_output_size=256'),
    Official('model.predictor_hidden_dim', 4096, 'byol byol/configs/byol.py',
             'predictor_hidden_size=4096'),
]

SWAV = [
    Official('batch_size', 4096, 'swav README.md', '| SwAV | 400 | 4096 | 2x224 | 70.1 |'),
    Official('optim.optimizer', 'larc', 'swav main_swav.py',
             'LARC(optimizer=torch.optim.SGD(...), trust_coefficient=0.001, clip=False)'),
    Official('optim.lars_trust_coefficient', 0.001, 'swav main_swav.py',
             'LARC(..., trust_coefficient=0.001, clip=False)'),
    Official('optim.momentum', 0.9, 'swav main_swav.py', 'torch.optim.SGD(..., momentum=0.9)'),
    Official('optim.weight_decay', 1e-6, 'swav main_swav.py', '"--wd", default=1e-6'),
    Official('optim.warmup_epochs', 10, 'swav main_swav.py', '"--warmup_epochs", default=10'),
    Official('optim.lr_schedule', 'cosine', 'swav main_swav.py',
             'cosine_lr_schedule: one value per iteration'),
    Official('swav.temperature', 0.1, 'swav main_swav.py', '"--temperature", default=0.1'),
    Official('swav.epsilon', 0.05, 'swav main_swav.py', '"--epsilon", default=0.05'),
    Official('swav.sinkhorn_iterations', 3, 'swav main_swav.py',
             '"--sinkhorn_iterations", default=3'),
    Official('swav.num_prototypes', 3000, 'swav main_swav.py',
             '"--nmb_prototypes", default=3000'),
    Official('model.projector_dim', 128, 'swav main_swav.py', '"--feat_dim", default=128'),
    Official('model.projector_hidden_dim', 2048, 'swav main_swav.py',
             '"--hidden_mlp", default=2048'),
]

# The paper's Sec. 5: SimSiam as an alternation (k-step) and with a moving-average target.
EM_VARIANTS = [
    Official('simsiam.target', 'online', 'paper Sec. 5.1',
             'one-step alternation is SimSiam: the target is the online encoder'),
    Official('simsiam.target_refresh_steps', 1, 'paper Sec. 5.1', '"1-step" is SimSiam'),
    Official('simsiam.bank_momentum', 0.8, 'paper Sec. 5.2',
             'eta_x <- m * eta_x + (1 - m) * F(T\'(x)), m = 0.8: 55.0%'),
]

TABLES = {'imagenet': SIMSIAM + EM_VARIANTS, 'imagenet_linear': LINEAR, 'moco_v2': MOCO_V2,
          'simclr': SIMCLR, 'byol': BYOL, 'swav': SWAV}


def _field(config, dotted: str):
  for name in dotted.split('.'):
    config = config[name]
  return tuple(config) if isinstance(config, (list, tuple)) else config


@pytest.mark.parametrize('config_name,row', [(name, row) for name, rows in TABLES.items()
                                             for row in rows],
                         ids=lambda x: x if isinstance(x, str) else x.field)
def test_the_default_is_the_official_value(config_name, row):
  repo, path = row.source.split(' ', 1)
  assert repo in SOURCES, row
  config = importlib.import_module(f'configs.{config_name}').get_config()
  assert _field(config, row.field) == row.value, (
      f'configs/{config_name}.py: {row.field} is {_field(config, row.field)!r}; the official '
      f'value is {row.value!r} ({SOURCES[repo]} {path}: {row.quote})')


def test_the_large_batch_lrs_are_the_official_scaled_lrs():
  """SwAV's script gives the lr at batch 4096 (--base_lr 4.8); SimCLR and BYOL scale theirs
  linearly from batch 256, as our rule does."""
  expected = {'swav': 4.8, 'simclr': 0.3 * 4096 / 256, 'byol': 0.45 * 4096 / 256}
  for name, lr in expected.items():
    config = importlib.import_module(f'configs.{name}').get_config()
    assert math.isclose(optimizer.initial_learning_rate(config.optim, config.batch_size), lr)


def test_swavs_prototypes_are_frozen_for_the_epoch_its_313_iterations_are():
  """main_swav.py --freeze_prototypes_niters 313: one ImageNet epoch at batch 4096, whose
  loader gives 312 full batches (1,281,167 / 4096 = 312.8). The field is in epochs, so a
  smaller dataset freezes the same share; here that is 312 steps, one fewer (swav.py says so)."""
  config = importlib.import_module('configs.swav').get_config()
  steps_per_epoch = input_pipeline.steps_per_epoch(config.data.train_examples, config.batch_size)
  assert swav.freeze_steps(config, steps_per_epoch) == steps_per_epoch == 312


@pytest.mark.parametrize('variant,figure,overrides', [
    ('k_10', '10-step: 68.7', {'simsiam.target': 'k_step', 'simsiam.target_refresh_steps': 10}),
    ('k_100', '100-step: 68.9',
     {'simsiam.target': 'k_step', 'simsiam.target_refresh_steps': 100}),
    ('k_1_epoch', '1-epoch: 67.0',
     {'simsiam.target': 'k_step', 'simsiam.target_refresh_epochs': 1.0}),
    ('memory_bank', 'moving average m=0.8, no predictor: 55.0',
     {'simsiam.target': 'memory_bank', 'model.predictor': 'none'}),
])
def test_the_em_study_runs_the_papers_variants_with_its_figures(variant, figure, overrides):
  """The paper's Sec. 5 table (k-step alternation) and its moving-average experiment, which
  runs without a predictor at m = 0.8 (the base config's bank_momentum, pinned above)."""
  assert ablations.EM[variant] == (figure, overrides)
