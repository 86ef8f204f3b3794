"""README.md and docs/pytorch.md quote the parity tests' tolerances (tests/tolerances.py) as
they are."""

import os

import pytest

import tolerances as t
from helpers import REPO_ROOT


def number(value: float) -> str:
  """1e-10, 5e-5: as the docs write them."""
  return f'{value:.0e}'.replace('e-0', 'e-')


def read(path):
  with open(os.path.join(REPO_ROOT, path)) as f:
    return ' '.join(f.read().split())  # Line breaks as spaces.


share = f'{t.FLOAT32_SGD_SHARE_OF_CHANGE:.0%}'
torch_factor = f'within {t.FLOAT32_AS_EXACT_AS_TORCH}x'


@pytest.mark.parametrize('path,quotes', [
    ('README.md', [f'agree to {number(t.FLOAT64)} in float64',
                   f'inference outputs to {number(t.FLOAT32)}',
                   f"as torch's own float32 ({torch_factor})",
                   f"as torch's do within {share} of its change",
                   f'LARC steps agree to {number(t.FLOAT32_LARC)}']),
    ('docs/pytorch.md', [f'| {number(t.FLOAT64)} |', f'| {number(t.FLOAT64_INFERENCE)} |',
                         f'| {number(t.FLOAT32)} |',
                         f'{number(t.FLOAT32)}, or {torch_factor} of torch float32',
                         f'| {number(t.FLOAT32_LOSS)} absolute |',
                         f'| {number(t.FLOAT64_SGD)} (absolute below '
                         f'{number(t.FLOAT64_SGD_FLOOR)}) |',
                         f"| {share} of each tensor's change",
                         f'| {number(t.FLOAT32_LARC)} |']),
])
def test_the_docs_quote_the_asserted_tolerances(path, quotes):
  text = read(path)
  missing = [quote for quote in quotes if quote not in text]
  assert not missing, f'{path} does not quote tests/tolerances.py: {missing}'
