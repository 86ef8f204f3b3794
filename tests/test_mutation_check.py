"""The mutation check stays true: every mutant still applies to the code it names."""

import importlib.util
import os

from helpers import REPO_ROOT


def load_mutation_check():
  spec = importlib.util.spec_from_file_location(
      'mutation_check', os.path.join(REPO_ROOT, 'tools', 'mutation_check.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_mutant_applies_once_and_names_existing_tests(tmp_path):
  mutation_check = load_mutation_check()
  assert mutation_check.stale_mutants() == []
  # A mutant whose source moved is reported, with its name.
  moved = mutation_check.Mutant('moved', 'simsiam_jax/losses.py', 'no such line', 'x',
                                ('tests/no_such_test.py',))
  problems = mutation_check.stale_mutants(mutants=(moved,))
  assert len(problems) == 2 and all(p.startswith('moved: ') for p in problems), problems
