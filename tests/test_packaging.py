"""`pip install .` alone gives a working install: a wheel of the tree, in a fresh venv."""

import os
import shutil
import subprocess
import sys
import venv

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each defines its absl flags on import, so each runs in its own process.
COMMAND_LINE_TOOLS = ('simsiam_jax.main', 'simsiam_jax.studies.ablations', 'simsiam_jax.studies.curves',
                      'simsiam_jax.convert')


def _run(*args, ok=(0,), **kwargs):
  result = subprocess.run(args, capture_output=True, text=True, timeout=900, **kwargs)
  assert result.returncode in ok, f'{" ".join(args)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}'
  return result


def test_wheel_installs_its_dependencies_into_a_fresh_venv_and_runs(tmp_path):
  # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
  source = tmp_path / 'source'
  shutil.copytree(os.path.join(REPO_ROOT, 'simsiam_jax'), source / 'simsiam_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('setup.cfg', 'pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO_ROOT, name), source)
  _run(sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
       '-w', str(tmp_path / 'dist'), str(source))
  wheel, = (tmp_path / 'dist').glob('simsiam_jax-*.whl')

  env_dir = tmp_path / 'venv'
  venv.create(env_dir, with_pip=True)
  python = str(env_dir / 'bin' / 'python')
  # Without byte-compiling every installed module (TensorFlow's thousands): half the time;
  # what the commands below import compiles as they run.
  _run(python, '-m', 'pip', 'install', '-q', '--no-compile', str(wheel))
  # Outside the repository, so that only the installed package can answer.
  for tool in COMMAND_LINE_TOOLS:
    # absl's --help exits with status 1.
    result = _run(python, '-m', tool, '--help', ok=(0, 1), cwd=tmp_path)
    assert '--workdir' in result.stdout and 'Traceback' not in result.stderr, tool
  # The other modules, in one process, so that a missing dependency cannot hide.
  modules = sorted({f'simsiam_jax.{path[:-3].replace(os.sep, ".")}'
                    for path in _module_paths(os.path.join(REPO_ROOT, 'simsiam_jax'))
                    if not path.endswith('__init__.py')} - set(COMMAND_LINE_TOOLS))
  _run(python, '-c', f'import importlib; [importlib.import_module(m) for m in {modules!r}]',
       cwd=tmp_path)


def _module_paths(package_dir):
  for root, _, files in os.walk(package_dir):
    for name in files:
      if name.endswith('.py'):
        yield os.path.relpath(os.path.join(root, name), package_dir)
