"""Every command-line tool answers a bad input with one `error:` line, not a traceback.

One table of cases across `simsiam_jax.main` (all three modes), `ablations`, `curves` and
`convert`: config values of every type, flags, image folders with unusable contents,
checkpoints that are missing, truncated, foreign or of another model, workdirs that cannot
be written. Each case must exit with status 2, print exactly one line starting with
`error:` that names the field or path, print no traceback, and leave the checkpoints of an
existing run byte-identical. Cases whose mistake is only in the config, the data, the
checkpoints or the workdir run in-process through the same error exit as the command line
(`cli.exit_on_error` around `modes.run`); the others, and one of each kind of error, run
as subprocesses, a few at a time.
"""

import ast
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import traceback

import numpy as np
import pytest
from PIL import Image

from configs import default
from simsiam_jax import cli, config_validation, methods, modes
from helpers import REPO_ROOT, TINY_RUN

LINEAR = ['--config.mode=linear_eval', '--config.linear.batch_size=16',
          '--config.linear.num_epochs=1']
KNN = ['--config.mode=knn']


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  tool: str  # Module run with `python -m`.
  args: tuple[str, ...]
  # Must appear in the error line; {placeholders} are paths of the `places` fixture.
  expected: str
  # `main` with --config.* and --workdir only: run in-process (see run_in_process).
  in_process: bool = False


def main_case(name, *args, expected, base=tuple(TINY_RUN), in_process=True):
  return Case(name, 'simsiam_jax.main', (*base, '--workdir={new_workdir}', *args), expected,
              in_process)


def eval_case(name, mode_args, *args, expected, in_process=True):
  return main_case(name, *mode_args, '--config.pretrained_workdir={pretrained}', *args,
                   expected=expected, in_process=in_process)


def folder_case(name, root, *args, expected, in_process=True):
  return main_case(name, '--config.data.source=folder', f'--config.data.root={{{root}}}',
                   *args, expected=expected, in_process=in_process)


CASES = [
    # Config values: numbers, ranges, choices, pairs, types, unknown fields.
    main_case('batch_not_divisible', '--config.batch_size=12', expected='config.batch_size=12'),
    main_case('batch_larger_than_dataset', '--config.batch_size=128',
              expected='config.batch_size=128'),
    main_case('batch_not_a_number', '--config.batch_size=abc', expected='--config.batch_size',
              in_process=False),
    main_case('unknown_model', '--config.model.name=resnet51', expected='config.model.name'),
    main_case('unknown_method', '--config.method=dino', expected='config.method',
              in_process=False),
    main_case('unknown_mode', '--config.mode=train', expected='config.mode'),
    main_case('unknown_field', '--config.data.nonfield=3', expected='--config.data.nonfield',
              in_process=False),
    main_case('knn_k_not_an_integer', '--config.evals.knn.k=2.5', expected='--config.evals.knn.k',
              in_process=False),
    main_case('image_smaller_than_stem', '--config.model.cifar_stem=False',
              expected='config.data.image_size'),
    main_case('unknown_synthetic_split', '--config.data.eval_split=val',
              expected='config.data.eval_split'),
    # Flags and files.
    main_case('missing_config_file', expected='configs/missing.py',
              base=('--config=configs/missing.py',), in_process=False),
    main_case('unknown_flag', '--bogus=1', expected='bogus', in_process=False),
    main_case('stray_argument', 'extra', expected='extra', in_process=False),
    Case('workdir_is_a_file', 'simsiam_jax.main', (*TINY_RUN, '--workdir={a_file}'),
         '{a_file}'),
    Case('workdir_parent_missing', 'simsiam_jax.main',
         (*TINY_RUN, '--workdir={missing}/run'), '--workdir', in_process=True),
    Case('workdir_read_only', 'simsiam_jax.main', (*TINY_RUN, '--workdir={read_only}/run'),
         '{read_only}/run', in_process=True),
    # Image folders.
    folder_case('folder_missing', 'missing', expected='config.data.root', in_process=False),
    folder_case('folder_one_class', 'one_class', expected='config.data.eval_train_split'),
    folder_case('folder_eval_classes_not_in_train', 'other_classes',
                expected='config.data.eval_split'),
    folder_case('folder_only_unreadable_images', 'unreadable',
                expected='config.data.train_split'),
    folder_case('folder_split_missing', 'one_class', '--config.data.train_split=nope',
                expected='config.data.train_split'),
    # Checkpoints: resuming another model, evaluating what is not there or not readable.
    Case('resume_with_another_model', 'simsiam_jax.main',
         (*TINY_RUN, '--workdir={resumed}', '--config.model.width=8'),
         'config.model.width: 4 -> 8', in_process=True),
    eval_case('knn_of_another_model', KNN, '--config.model.width=8',
              expected='config.model.width: 4 -> 8'),
    main_case('knn_without_pretrained_workdir', *KNN, expected='config.pretrained_workdir'),
    main_case('knn_of_a_workdir_without_checkpoints', *KNN,
              '--config.pretrained_workdir={missing}', expected='{missing}'),
    main_case('linear_of_a_truncated_checkpoint', *LINEAR,
              '--config.pretrained_workdir={truncated}', expected='{truncated}',
              in_process=False),
    main_case('knn_of_a_foreign_checkpoint', *KNN, '--config.pretrained_workdir={foreign}',
              expected='{foreign}'),
    eval_case('linear_batch_zero', LINEAR, '--config.linear.batch_size=0',
              expected='config.linear.batch_size'),
    eval_case('linear_momentum_above_one', LINEAR, '--config.linear.momentum=1.5',
              expected='config.linear.momentum'),
    # The other tools.
    Case('ablations_unknown_variant', 'simsiam_jax.studies.ablations',
         (*TINY_RUN, '--workdir={new_workdir}', '--variants=bogus'), 'bogus'),
    Case('ablations_bad_config_value', 'simsiam_jax.studies.ablations',
         (*TINY_RUN, '--workdir={new_workdir}', '--config.evals.knn.k=0'), 'config.evals.knn.k'),
    Case('curves_without_checkpoints', 'simsiam_jax.studies.curves',
         ('--workdirs={missing}', '--out={new_workdir}.png'), '{missing}'),
    Case('curves_labels_do_not_match', 'simsiam_jax.studies.curves',
         ('--workdirs={pretrained}', '--labels=a,b', '--out={new_workdir}.png'), '--labels'),
    Case('convert_missing_torch_file', 'simsiam_jax.convert',
         ('--config=configs/default.py', '--workdir={new_workdir}',
          '--import_torch={missing}.pth'), '{missing}.pth'),
    Case('convert_foreign_file', 'simsiam_jax.convert',
         ('--config=configs/default.py', '--workdir={new_workdir}',
          '--import_torch={a_file}'), '{a_file}'),
    Case('convert_no_action', 'simsiam_jax.convert',
         ('--config=configs/default.py', '--workdir={new_workdir}'), '--import_torch'),
    Case('convert_export_without_checkpoints', 'simsiam_jax.convert',
         (*TINY_RUN, '--workdir={missing}', '--export_torchvision={new_workdir}.pth'),
         '{missing}'),
]


# More bad values of single fields, checked in-process (milliseconds each): the table above
# already shows how any ConfigError reaches the command line.
BAD_FIELD_VALUES = [
    ('optim.base_lr', -0.1), ('num_epochs', 0), ('optim.lr_schedule', 'linear'),
    ('optim.optimizer', 'adam'), ('optim.lars_trust_coefficient', 0.0),
    ('aug.crop_scale', (1.5, 0.2)), ('aug.hue', 0.7), ('aug.grayscale_prob', 1.5),
    ('evals.knn.k', 0), ('optim.momentum', 1.0), ('aug.crop_scale', (0.5,)),
    ('aug.crop_ratio', (0.0, 1.0)),
    ('aug.brightness', -0.1), ('aug.contrast', 'high'), ('aug.blur_sigma', (2.0, 0.1)),
    ('aug.blur_sigma', (0.0, 1.0)), ('aug.flip_prob', -0.5), ('aug.hue', -0.1),
    ('aug.blur_kernel_fraction', 0.0), ('evals.knn.temperature', 0.0),
    ('evals.knn.every_epochs', -1),
    ('data.eval_crop_fraction', 0.0), ('data.eval_crop_fraction', 1.5),
    ('data.jpeg_dct_method', 'FASTEST'), ('data.augment_on', 'gpu'),
    ('data.std', (0.2, 0.2, 0.0)),
    ('data.mean', (0.5, 0.5)), ('optim.warmup_epochs', 100), ('optim.weight_decay', -1e-4),
    ('collapse_warning_fraction', 2.0), ('linear.crop_scale', (1.0, 0.08)),
    ('linear.lr_schedule', 'step'), ('linear.momentum', -0.1), ('linear.weight_decay', -1.0),
    ('linear.eval_every_epochs', -1), ('linear.checkpoint_every_steps', 0),
    ('linear.feature_dtype', 'float16'),
]
# Method fields (methods/simsiam.py validate), alone or with the settings they conflict with.
BAD_METHOD_VALUES = [
    ({'method': 'dino'}, 'method'), ({'simsiam.target': 'ema'}, 'simsiam.target'),
    ({'simsiam.target': 'k_step', 'simsiam.target_refresh_steps': 0},
     'simsiam.target_refresh_steps'),
    ({'simsiam.target': 'k_step', 'simsiam.target_refresh_steps': 2.5},
     'simsiam.target_refresh_steps'),
    ({'simsiam.target': 'k_step', 'simsiam.target_refresh_epochs': -1.0},
     'simsiam.target_refresh_epochs'),
    ({'simsiam.target': 'k_step', 'stop_gradient': False}, 'stop_gradient'),
    ({'simsiam.target': 'memory_bank', 'simsiam.bank_momentum': 1.0}, 'simsiam.bank_momentum'),
    ({'simsiam.target': 'memory_bank', 'loss_symmetry': 'asymmetric'}, 'loss_symmetry'),
    ({'simsiam.target': 'memory_bank', 'data.source': 'tfds'}, 'data.source'),
    ({'method': 'simclr', 'simclr.temperature': 0.0}, 'simclr.temperature'),
    ({'method': 'moco_v2', 'moco_v2.momentum': 1.0}, 'moco_v2.momentum'),
    ({'method': 'moco_v2', 'moco_v2.temperature': -0.2}, 'moco_v2.temperature'),
    ({'method': 'moco_v2', 'moco_v2.queue_size': 0}, 'moco_v2.queue_size'),
    # default.py's batch of 128 enqueues 256 keys a step (symmetric), 128 asymmetric.
    ({'method': 'moco_v2', 'moco_v2.queue_size': 1152}, 'moco_v2.queue_size'),
    ({'method': 'moco_v2', 'moco_v2.symmetric': False, 'moco_v2.queue_size': 1000},
     'moco_v2.queue_size'),
    ({'method': 'moco_v2', 'moco_v2.symmetric': 'yes'}, 'moco_v2.symmetric'),
    ({'method': 'byol', 'byol.tau_base': 1.5}, 'byol.tau_base'),
    ({'method': 'swav', 'swav.num_prototypes': 0}, 'swav.num_prototypes'),
    ({'method': 'swav', 'swav.temperature': 0.0}, 'swav.temperature'),
    ({'method': 'swav', 'swav.epsilon': -0.05}, 'swav.epsilon'),
    ({'method': 'swav', 'swav.sinkhorn_iterations': 2.5}, 'swav.sinkhorn_iterations'),
    ({'method': 'swav', 'swav.freeze_prototypes_epochs': -1.0}, 'swav.freeze_prototypes_epochs'),
]


def _set_field(config, field, value):
  *parents, name = field.split('.')
  parent = config
  for key in parents:
    parent = parent[key]
  with parent.ignore_type():
    parent[name] = value


@pytest.mark.parametrize('field,value', BAD_FIELD_VALUES, ids=lambda x: str(x))
def test_every_bad_field_value_is_a_config_error_naming_the_field(field, value):
  config = default.get_config()
  _set_field(config, field, value)
  with pytest.raises(config_validation.ConfigError, match=re.escape(f'config.{field}=')):
    if field.startswith('linear.'):
      config_validation.validate_linear_config(config, device_count=8)
    else:
      config_validation.validate_config(config, device_count=8)


@pytest.mark.parametrize('values,field', BAD_METHOD_VALUES, ids=lambda x: str(x))
def test_every_bad_method_value_is_a_config_error_naming_the_field(values, field):
  config = default.get_config()
  for path, value in values.items():
    _set_field(config, path, value)
  with pytest.raises(config_validation.ConfigError, match=re.escape(f'config.{field}=')):
    methods.get(config.method).validate(config)


def _write_folder(root, classes_by_split, image=None, count=16):
  pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  for split, classes in classes_by_split.items():
    for name in classes:
      os.makedirs(os.path.join(root, split, name))
      for i in range(count):
        path = os.path.join(root, split, name, f'{i}.jpg')
        if image is None:
          Image.fromarray(pixels).save(path)
        else:
          with open(path, 'wb') as f:
            f.write(image)


def _checkpoint_digest(workdir):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(os.path.join(workdir, 'checkpoints'))):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(os.path.join(root, name).encode() + f.read())
  return digest.hexdigest()


def _read_only_directory(tmp_path):
  if os.geteuid() == 0:  # Root writes through permission bits; /sys refuses even root.
    return '/sys'
  path = tmp_path / 'read_only'
  path.mkdir()
  path.chmod(0o555)
  return str(path)


@pytest.fixture(scope='module')
def places(tmp_path_factory, pretrained_workdir):
  """The paths the cases name: the shared pretrained run and damaged or foreign copies."""
  tmp = tmp_path_factory.mktemp('bad_input')
  pretrained = pretrained_workdir
  paths = {'pretrained': pretrained, 'missing': str(tmp / 'missing'),
           'read_only': _read_only_directory(tmp)}
  for name in ('resumed', 'truncated', 'foreign'):
    paths[name] = str(tmp / name)
    shutil.copytree(pretrained, paths[name])
  for root, _, files in os.walk(os.path.join(paths['truncated'], 'checkpoints')):
    for name in files:  # Every file of every step cut to half its length.
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  shutil.rmtree(os.path.join(paths['foreign'], 'checkpoints'))
  os.makedirs(os.path.join(paths['foreign'], 'checkpoints', '4'))
  with open(os.path.join(paths['foreign'], 'checkpoints', '4', 'model.bin'), 'wb') as f:
    f.write(os.urandom(1000))
  paths['a_file'] = str(tmp / 'a_file.txt')
  with open(paths['a_file'], 'w') as f:
    f.write('not a checkpoint, not a directory\n')
  _write_folder(tmp / 'one_class', {'train': ['cat'], 'test': ['cat']})
  _write_folder(tmp / 'other_classes', {'train': ['cat', 'dog'], 'test': ['cat', 'cow']})
  _write_folder(tmp / 'unreadable', {'train': ['cat', 'dog'], 'test': ['cat', 'dog']},
                image=b'')
  for name in ('one_class', 'other_classes', 'unreadable'):
    paths[name] = str(tmp / name)
  return paths


def _config_and_workdir(args):
  """The config and workdir of `main`'s --config=configs/default.py, --config.* and
  --workdir flags, values read as Python literals (else strings) as config_flags does."""
  config = default.get_config()
  workdir = None
  for arg in args:
    name, value = arg[2:].split('=', 1)
    if name == 'workdir':
      workdir = value
    elif name != 'config':
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # A string, such as a path.
      _set_field(config, name[len('config.'):], value)
  assert default.__file__.endswith(args[0].split('=')[1]), args[0]
  return config, workdir


def run_in_process(args) -> subprocess.CompletedProcess:
  """What `python -m simsiam_jax.main ARGS` does after parsing its flags, in this process:
  the error exit of the command line around the run of the config's mode."""
  config, workdir = _config_and_workdir(args)
  stderr = io.StringIO()
  returncode = 0
  with contextlib.redirect_stderr(stderr):
    try:
      with cli.exit_on_error():
        modes.run(config, workdir)
    except SystemExit as e:
      returncode = e.code
    except Exception:  # pylint: disable=broad-except
      # What the command line would show: a traceback.
      returncode = 1
      stderr.write(traceback.format_exc())
  return subprocess.CompletedProcess(args, returncode, '', stderr.getvalue())


@pytest.fixture(scope='module')
def results(places, tmp_path_factory):
  """{case name: (command result, the checkpoints' digests before and after)}; command-line
  cases run 3 at a time."""
  runs = tmp_path_factory.mktemp('runs')
  digests = {name: _checkpoint_digest(places[name])
             for name in ('pretrained', 'resumed', 'truncated', 'foreign')}

  def args(case):
    values = {**places, 'new_workdir': str(runs / case.name)}
    return [arg.format(**values) for arg in case.args]

  def run(case):
    return subprocess.run([sys.executable, '-m', case.tool, *args(case)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)

  command_line = [case for case in CASES if not case.in_process]
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    outcomes = dict(zip((case.name for case in command_line), pool.map(run, command_line)))
  outcomes.update({case.name: run_in_process(args(case)) for case in CASES if case.in_process})
  after = {name: _checkpoint_digest(places[name]) for name in digests}
  return outcomes, digests, after


def test_the_table_has_at_least_30_cases_with_distinct_names():
  assert len(CASES) >= 30 and len({case.name for case in CASES}) == len(CASES)
  # In-process cases are `main` runs that only set config fields and the workdir.
  for case in CASES:
    if case.in_process:
      assert case.tool == 'simsiam_jax.main' and case.args[0] == TINY_RUN[0], case.name
      assert all(arg.startswith(('--config.', '--workdir=')) for arg in case.args[1:]), case.name


@pytest.mark.parametrize('case', CASES, ids=lambda case: case.name)
def test_bad_input_is_one_clear_error_line(case, places, results):
  outcomes, _, _ = results
  result = outcomes[case.name]
  report = f'stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-4000:]}'
  assert result.returncode == 2, report
  assert 'Traceback' not in result.stderr + result.stdout, report
  error_lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error_lines) == 1, report
  assert case.expected.format(**places) in error_lines[0], report


def test_no_case_changed_the_checkpoints_of_an_existing_run(results):
  _, before, after = results
  assert before == after
