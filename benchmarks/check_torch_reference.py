"""Checks tests/torch_reference.py, the transcription the parity tests use, against real
torchvision: same state-dict keys and shapes, and the same outputs from the same weights,
for ResNet-18/50 and the official SimSiam builder on them, in train and eval mode.

torchvision does not install beside the torch CI uses, so this runs once in its own venv:

  python3 -m venv /tmp/venv-tv && /tmp/venv-tv/bin/pip install torch torchvision
  /tmp/venv-tv/bin/python benchmarks/check_torch_reference.py

It prints one line per check and exits non-zero on the first difference.
"""

import copy
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))
import torch_reference as ref  # pylint: disable=wrong-import-position


def check_same(name, ours, theirs, *inputs):
  ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
  assert list(ours_state) == list(theirs_state), f'{name}: keys differ'
  for key in ours_state:
    assert ours_state[key].shape == theirs_state[key].shape, f'{name}: {key} shape differs'
  ours.load_state_dict(theirs_state, strict=True)
  for train in (True, False):
    a, b = copy.deepcopy(ours).train(train), copy.deepcopy(theirs).train(train)
    with torch.no_grad():
      out_a, out_b = a(*inputs), b(*inputs)
    out_a = out_a if isinstance(out_a, tuple) else (out_a,)
    out_b = out_b if isinstance(out_b, tuple) else (out_b,)
    for x, y in zip(out_a, out_b):
      assert torch.equal(x, y), f'{name} (train={train}): outputs differ'
  print(f'{name}: {len(ours_state)} tensors, same keys, shapes and outputs (train and eval)')


def main():
  torch.manual_seed(0)
  print(f'torch {torch.__version__}, torchvision {torchvision.__version__}')
  x1, x2 = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
  for arch in ('resnet18', 'resnet50'):
    check_same(arch, getattr(ref, arch)(zero_init_residual=True),
               getattr(torchvision.models, arch)(zero_init_residual=True), x1)
    check_same(f'SimSiam({arch})', ref.SimSiam(getattr(ref, arch)),
               ref.SimSiam(getattr(torchvision.models, arch)), x1, x2)


if __name__ == '__main__':
  main()
