"""The official PyTorch SimSiam step on a config's shapes, for train_step.py to time beside
the JAX step: facebookresearch/simsiam's builder (tests/torch_reference.py, checked against
torchvision by check_torch_reference.py) and main_simsiam.py's loop body (forward both
views, negative cosine, zero_grad, backward, SGD step), float32, NCHW as the official code
runs. Its input is already-normalised float views, where the JAX step takes uint8 and
normalises inside; that difference is a few elementwise ops.
"""

import functools
import importlib.util
import os
import sys
import time

import ml_collections

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))


def unsupported_reason(config: ml_collections.ConfigDict, platform: str) -> str | None:
  """Why the official step cannot stand for SimSiam's step of `config` on `platform`; None
  if it can."""
  model = config.model
  if platform != 'cpu':
    return 'the PyTorch step is timed on CPU hosts only'
  if config.half_precision:
    return 'the official step is float32; set --config.half_precision=False to compare'
  if (model.predictor, model.head_batch_norm, config.loss_symmetry) != (
      'mlp', 'default', 'symmetric'):
    return 'the official builder has the MLP predictor, BN heads and the symmetric loss only'
  if importlib.util.find_spec('torch') is None:
    return 'torch is not installed (pip install torch==2.13.0)'
  import torch_reference  # pylint: disable=import-outside-toplevel
  if model.name not in torch_reference.RESNETS:
    return f'no torchvision ResNet named {model.name}'
  return None


class TorchStep:
  """The official step, built once on random views of the config's batch and image size."""

  def __init__(self, config: ml_collections.ConfigDict):
    import torch  # pylint: disable=import-outside-toplevel
    import torch_reference as ref  # pylint: disable=import-outside-toplevel
    self._torch, self._ref = torch, ref
    torch.manual_seed(config.seed)
    model = config.model
    encoder = functools.partial(ref.ResNet, *ref.RESNETS[model.name], width=model.width,
                                cifar_stem=model.cifar_stem)
    self.model = ref.SimSiam(encoder, dim=model.projector_dim, pred_dim=model.predictor_hidden_dim,
                             projector_layers=model.projector_layers,
                             projector_hidden_dim=model.projector_hidden_dim)
    self.model.train()
    lr = config.optim.base_lr * config.batch_size / 256
    self.optimizer = ref.official_optimizer(self.model, lr, config.optim.momentum,
                                            config.optim.weight_decay,
                                            config.optim.fixed_predictor_lr)
    shape = (config.batch_size, 3, config.data.image_size, config.data.image_size)
    self.views = (torch.randn(shape), torch.randn(shape))
    self.threads = torch.get_num_threads()
    self.times = []

  def run(self) -> float:
    started = time.perf_counter()
    p1, p2, z1, z2 = self.model(*self.views)
    loss = self._ref.simsiam_loss(p1, p2, z1, z2)
    self.optimizer.zero_grad()
    loss.backward()
    self.optimizer.step()
    float(loss)
    return time.perf_counter() - started
