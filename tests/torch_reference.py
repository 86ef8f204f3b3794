"""The official PyTorch code that the parity tests compare against, transcribed.

- `ResNet`, `BasicBlock`, `Bottleneck`, `RESNETS`, `resnet18/50`: torchvision/models/resnet.py (same
  module and key names, same initialisation), plus two switches torchvision lacks and the
  tests need: `width` (64 is torchvision's; smaller for fast tests) and `cifar_stem` (a 3x3
  stride-1 conv1 and no max-pool, the usual CIFAR variant). With width=64 and
  cifar_stem=False the network is torchvision's: `benchmarks/check_torch_reference.py`
  checks it against real torchvision, key for key and output for output.
- `SimSiam`: facebookresearch/simsiam simsiam/builder.py, with the number of projector
  layers as an argument (3 is the official one; the paper's CIFAR recipe uses 2).
- `LARC`: apex/parallel/LARC.py (clip=False is what main_lincls.py uses).
- `adjust_learning_rate`: main_simsiam.py's per-epoch cosine with the fixed predictor lr.

torchvision cannot be installed beside torch 2.13 here, hence the transcription.
"""

import math

import torch
from torch import nn


def conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    out += identity
    return self.relu(out)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv1x1(inplanes, planes)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = conv3x3(planes, planes, stride)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = conv1x1(planes, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    out += identity
    return self.relu(out)


class ResNet(nn.Module):

  def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, width=64,
               cifar_stem=False):
    super().__init__()
    self.inplanes = width
    if cifar_stem:
      self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    else:
      self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2,
                                                                 padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(8 * width * block.expansion, num_classes)

    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
    if zero_init_residual:
      for m in self.modules():
        if isinstance(m, Bottleneck):
          nn.init.constant_(m.bn3.weight, 0)
        elif isinstance(m, BasicBlock):
          nn.init.constant_(m.bn2.weight, 0)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    for _ in range(1, blocks):
      layers.append(block(self.inplanes, planes))
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = torch.flatten(self.avgpool(x), 1)
    return self.fc(x)


# torchvision's depths, by the names the project's configs use.
RESNETS = {'resnet18': (BasicBlock, [2, 2, 2, 2]), 'resnet34': (BasicBlock, [3, 4, 6, 3]),
           'resnet50': (Bottleneck, [3, 4, 6, 3]), 'resnet101': (Bottleneck, [3, 4, 23, 3]),
           'resnet152': (Bottleneck, [3, 8, 36, 3])}


def resnet18(**kwargs):
  return ResNet(*RESNETS['resnet18'], **kwargs)


def resnet50(**kwargs):
  return ResNet(*RESNETS['resnet50'], **kwargs)


class SimSiam(nn.Module):
  """simsiam/builder.py; `projector_layers=3` and dim = prev_dim are the official build."""

  def __init__(self, base_encoder, dim=2048, pred_dim=512, projector_layers=3,
               projector_hidden_dim=None):
    super().__init__()
    self.encoder = base_encoder(num_classes=dim, zero_init_residual=True)
    prev_dim = self.encoder.fc.weight.shape[1]
    hidden = projector_hidden_dim or prev_dim
    layers, in_dim = [], prev_dim
    for _ in range(projector_layers - 1):
      layers += [nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden),
                 nn.ReLU(inplace=True)]
      in_dim = hidden
    if in_dim != prev_dim:  # Only with projector_hidden_dim: the output layer's input.
      self.encoder.fc = nn.Linear(in_dim, dim)
    self.encoder.fc = nn.Sequential(*layers, self.encoder.fc, nn.BatchNorm1d(dim, affine=False))
    # hack: not use bias as it is followed by BN
    self.encoder.fc[3 * (projector_layers - 1)].bias.requires_grad = False
    self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False),
                                   nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
                                   nn.Linear(pred_dim, dim))

  def forward(self, x1, x2):
    z1 = self.encoder(x1)
    z2 = self.encoder(x2)
    p1 = self.predictor(z1)
    p2 = self.predictor(z2)
    return p1, p2, z1.detach(), z2.detach()


def simsiam_loss(p1, p2, z1, z2):
  """main_simsiam.py: criterion = nn.CosineSimilarity(dim=1)."""
  criterion = nn.CosineSimilarity(dim=1)
  return -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5


def official_optimizer(model, init_lr, momentum, weight_decay, fix_pred_lr=True):
  """main_simsiam.py's SGD with --fix-pred-lr."""
  if fix_pred_lr:
    params = [{'params': model.encoder.parameters(), 'fix_lr': False},
              {'params': model.predictor.parameters(), 'fix_lr': True}]
  else:
    params = model.parameters()
  return torch.optim.SGD(params, init_lr, momentum=momentum, weight_decay=weight_decay)


def adjust_learning_rate(optimizer, init_lr, epoch, epochs):
  """main_simsiam.py: cosine per epoch; a fix_lr group keeps init_lr."""
  cur_lr = init_lr * 0.5 * (1. + math.cos(math.pi * epoch / epochs))
  for param_group in optimizer.param_groups:
    if 'fix_lr' in param_group and param_group['fix_lr']:
      param_group['lr'] = init_lr
    else:
      param_group['lr'] = cur_lr


class LARC:
  """apex/parallel/LARC.py."""

  def __init__(self, optimizer, trust_coefficient=0.02, clip=True, eps=1e-8):
    self.optim = optimizer
    self.trust_coefficient = trust_coefficient
    self.eps = eps
    self.clip = clip

  @property
  def param_groups(self):
    return self.optim.param_groups

  def zero_grad(self):
    self.optim.zero_grad()

  def step(self):
    with torch.no_grad():
      weight_decays = []
      for group in self.optim.param_groups:
        weight_decay = group['weight_decay'] if 'weight_decay' in group else 0
        weight_decays.append(weight_decay)
        group['weight_decay'] = 0
        for p in group['params']:
          if p.grad is None:
            continue
          param_norm = torch.norm(p.data)
          grad_norm = torch.norm(p.grad.data)
          if param_norm != 0 and grad_norm != 0:
            adaptive_lr = self.trust_coefficient * (param_norm) / (
                grad_norm + param_norm * weight_decay + self.eps)
            if self.clip:
              adaptive_lr = min(adaptive_lr / group['lr'], 1)
            p.grad.data += weight_decay * p.data
            p.grad.data *= adaptive_lr
    self.optim.step()
    for i, group in enumerate(self.optim.param_groups):
      group['weight_decay'] = weight_decays[i]


def randomize_batch_norm(model):
  """Not official code: random BatchNorm parameters and running statistics, so that no layer
  is at its default (and no residual branch starts at zero) in a comparison."""
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        if module.affine:
          module.weight.uniform_(0.5, 1.5)
          module.bias.normal_(0, 0.1)
  return model
