"""What every command-line tool of the project shares: flag parsing and the error exit
(one `error:` line, never a traceback), and quiet library output."""

import contextlib
import logging as std_logging
import os
import sys
import traceback
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from simsiam_jax import checkpointing, config_validation
from simsiam_jax.data import DataError
from simsiam_jax import workdir as workdir_lib
from simsiam_jax.models import torchvision_format

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


@contextlib.contextmanager
def _native_stderr_silenced():
  """Points file descriptor 2 at /dev/null; Python-level errors still raise afterwards."""
  saved = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


def import_tensorflow_quietly():
  """Imports TensorFlow (the input pipeline's) with the process's stderr silenced.

  While it loads, TensorFlow prints oneDNN and CPU-feature notices from C++, before any log
  level can apply, and a user can do nothing about them. Each command-line tool calls this
  before it imports a module that loads TensorFlow; library imports never touch the user's
  file descriptors. SIMSIAM_VERBOSE_IMPORTS=1 shows the notices.
  """
  if os.environ.get('SIMSIAM_VERBOSE_IMPORTS') == '1' or 'tensorflow' in sys.modules:
    return
  with _native_stderr_silenced():
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import


def _is_read_left_behind(unraisable) -> bool:
  """A read that outlived the event loop of the restore it belonged to: when one array of a
  checkpoint fails to read, orbax's restore fails at once and closes its loop, and the
  tensorstore reads still in flight report to the closed loop from their own threads.
  Nothing is lost (the failure itself is logged and handled); Python would print a
  traceback for each."""
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return (isinstance(unraisable.exc_value, RuntimeError) and
          str(unraisable.exc_value) == 'Event loop is closed' and
          any(frame.name == 'call_soon_threadsafe' for frame in frames))


def _drop_reads_left_behind(report_unraisable: Callable) -> Callable:
  """A `sys.unraisablehook` that passes all but reads left behind to `report_unraisable`."""

  def report_unless_read_left_behind(unraisable):
    if not _is_read_left_behind(unraisable):
      report_unraisable(unraisable)

  return report_unless_read_left_behind


def quiet_library_output():
  """Keeps INFO lines of libraries, and tracebacks of reads left behind by a failed
  restore, out of a command's output."""
  logging.get_absl_handler().addFilter(_DropInfoFromLibraries())
  sys.unraisablehook = _drop_reads_left_behind(sys.unraisablehook)


@contextlib.contextmanager
def exit_on_error():
  """For the command-line tools: a mistake in the config, the flags, the data or the
  checkpoints ends as one `error:` line on stderr and exit status 2, a diverged run (NaN/inf
  loss) as one with status 1, never as a traceback."""
  try:
    yield
  except (app.UsageError, config_validation.ConfigError, DataError,
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


def _config_file(argv: list[str]) -> str | None:
  """The file of --config in `argv` (config_flags' `path:argument` form included)."""
  for i, arg in enumerate(argv):
    value = arg.split('=', 1)[1] if arg.startswith('--config=') else (
        argv[i + 1] if arg == '--config' and i + 1 < len(argv) else None)
    if value is not None:
      return value if os.path.isfile(value) else value.split(':', 1)[0]
  return None


def make_config_package_importable(path: str):
  """A config file imports its base from the package it sits in (`from configs import
  base`): the folder above that package goes first on sys.path, so that the file loads from
  any working directory."""
  package_dir = os.path.dirname(os.path.abspath(path))
  if os.path.isfile(os.path.join(package_dir, '__init__.py')):
    root = os.path.dirname(package_dir)
    if root not in sys.path:
      sys.path.insert(0, root)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for `app.run(main, flags_parser=parse_flags)`: a bad flag, a
  config file that is missing or does not load, or a --config.* override of the wrong type
  or of no field ends as one `error:` line and exit status 2, as the other mistakes do."""
  path = _config_file(argv)
  try:
    if path:
      make_config_package_importable(path)
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].present:
      path = config_flags.get_config_filename(flags.FLAGS['config'])
      if not os.path.isfile(path):
        raise ValueError(f'--config={path}: no such file')
      flags.FLAGS['config'].value  # Loads the file now, not half-way into the run.
    return remaining
  except ImportError as e:  # The config file's own imports.
    message = f'--config={path}: the config file does not import: {e}'
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
