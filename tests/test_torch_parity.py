"""Same weights, same numbers: our model, loss and optimizers against the official PyTorch
code (tests/torch_reference.py), on the CPU.

Every comparison loads the torch model's weights into ours through
`models/torchvision_format.py`, the mapping the convert tool uses, so these tests also pin
that mapping. BatchNorm affine parameters and running statistics are randomised before the
copy, so that every layer (including the zero-initialised last BN of each block) shapes the
outputs. Errors are normwise: max |ours - torch| / max |torch| per tensor.

Two precisions:
- float64 on both sides (jax.enable_x64) checks that the computations are the same: outputs,
  loss, BatchNorm running statistics and every gradient agree to tolerances.FLOAT64, with no
  rounding to hide a difference behind.
- float32 checks the numbers training actually produces. Inference-mode outputs agree to
  tolerances.FLOAT32 (see it for why not 1e-5). With batch statistics a deep net is
  ill-conditioned in float32 (BatchNorm over few samples amplifies rounding, and a ReLU
  input within rounding of 0 flips): torch's own float32 ResNet-50 outputs are about 2e-4
  from its float64 ones. There ours must be within tolerances.FLOAT32 of torch's float32
  result or as close to the float64 one as torch's float32 is (within
  tolerances.FLOAT32_AS_EXACT_AS_TORCH). SGD steps on the real sharded train step move
  each parameter tensor as torch's do, within tolerances.FLOAT32_SGD_SHARE_OF_CHANGE of
  that tensor's change.

Every tolerance is in tests/tolerances.py, which README.md and docs/pytorch.md quote.
"""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import helpers
import tolerances
import torch_reference as ref
from configs import default
from simsiam_jax import optimizer, sharding, train
from simsiam_jax.data import preprocess
from simsiam_jax.evaluation import linear_eval
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model, torchvision_format
from simsiam_jax.train_state import TrainState

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

BATCH = 32
# The float64 checks compare computations, which the batch size does not change: they run at
# batch 8, where XLA's float64 ResNet-50 step on a CPU takes 3 s instead of 12 s at 32 (torch's
# 2.5 s), so that CI has room for them. Their lr stays make_config's 0.08.
FLOAT64_BATCH = 8
CASES = {
    # The paper's CIFAR variant (2-layer projector), narrowed for speed.
    'resnet18_cifar': dict(name='resnet18', width=16, cifar_stem=True, projector_layers=2,
                           projector_hidden_dim=128, projector_dim=128,
                           predictor_hidden_dim=32, image_size=32),
    # The official ImageNet network (ResNet-50, 2048-2048-2048 projector, 512 predictor) on
    # small images.
    'resnet50': dict(name='resnet50', width=64, cifar_stem=False, projector_layers=3,
                     projector_hidden_dim=2048, projector_dim=2048, predictor_hidden_dim=512,
                     image_size=32),
}
MEAN = np.asarray(default.base.IMAGENET_MEAN, np.float32)
STD = np.asarray(default.base.IMAGENET_STD, np.float32)


def make_config(case, batch_size=BATCH):
  spec = CASES[case]
  config = default.get_config()
  for field in ('name', 'width', 'cifar_stem', 'projector_layers', 'projector_hidden_dim',
                'projector_dim', 'predictor_hidden_dim'):
    config.model[field] = spec[field]
  config.data.image_size = spec['image_size']
  config.batch_size = batch_size
  # lr 0.08 at any batch (base 0.64 at 32): 5 steps move every parameter visibly.
  config.optim.base_lr = 0.08 * 256 / batch_size
  config.optim.weight_decay = 1e-3
  config.num_epochs = 3
  config.optim.lr_schedule = 'cosine_per_epoch'
  return config


def make_torch_model(case, seed=0, randomize_batch_norm=True):
  """The official model; by default with random BatchNorm parameters and statistics (so that
  no residual branch starts at zero), else as the official code initialises it."""
  spec = CASES[case]
  torch.manual_seed(seed)
  backbone = functools.partial({'resnet18': ref.resnet18, 'resnet50': ref.resnet50}[spec['name']],
                               width=spec['width'], cifar_stem=spec['cifar_stem'])
  model = ref.SimSiam(backbone, dim=spec['projector_dim'], pred_dim=spec['predictor_hidden_dim'],
                      projector_layers=spec['projector_layers'],
                      projector_hidden_dim=spec['projector_hidden_dim'])
  return ref.randomize_batch_norm(model) if randomize_batch_norm else model


def torch_state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def layers(config):
  return torchvision_format.simsiam_layers(config.model.name, config.model.projector_layers)


def import_variables(config, model):
  """The torch model's weights as our variables (the frozen projector bias folded)."""
  ours = create_model(config.model)
  size = config.data.image_size
  template = jax.eval_shape(lambda: ours.init(jax.random.key(0), jnp.zeros((2, size, size, 3)),
                                              jnp.zeros((2, size, size, 3)), train=False))
  state = torchvision_format.fold_frozen_projector_bias(torch_state(model),
                                                        config.model.projector_layers, '')
  return torchvision_format.from_torch(state, template, layers(config))


def export_stats(config, variables, model):
  """Our batch statistics under torch names, the frozen bias added back to the output BN."""
  exported = torchvision_format.to_torch(variables, layers(config))
  output = 3 * (config.model.projector_layers - 1)
  bias = model.encoder.fc[output].bias.detach().numpy()
  exported[f'encoder.fc.{output + 1}.running_mean'] = (
      exported[f'encoder.fc.{output + 1}.running_mean'] + bias)
  return {k: v for k, v in exported.items() if 'running' in k}


def images(config, seed):
  size = config.data.image_size
  rng = np.random.default_rng(seed)
  return {f'view{v}': rng.integers(0, 256, (config.batch_size, size, size, 3), dtype=np.uint8)
          for v in (1, 2)}


def torch_input(view):
  """The float images our step normalises a uint8 view to, NCHW for torch. (torchvision's
  ToTensor + Normalize computes (x / 255 - mean) / std, which rounds differently in the last
  bit; the input is the same so that the comparison is of the networks.)"""
  x = preprocess.normalize_images(view, MEAN, STD)
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def assert_close(actual, expected, tol, name='', floor=1e-12):
  err = error(actual, expected, floor)
  assert err <= tol, f'{name}: error {err:.2e} > {tol:.0e}'


def error(actual, expected, floor=1e-12):
  """max |actual - expected| / max(max |expected|, floor): normwise relative, absolute for
  tensors smaller than `floor`."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return np.abs(actual - expected).max() / max(np.abs(expected).max(), floor)


def assert_as_exact_as_torch(ours, torch32, torch64, name):
  """Ours is within tolerances.FLOAT32 of torch's float32 result, or nearly as close to the
  float64 result as torch's float32 result is."""
  to_float32, to_exact = error(ours, torch32), error(ours, torch64)
  torch_to_exact = error(torch32, torch64)
  assert (to_float32 <= tolerances.FLOAT32 or
          to_exact <= tolerances.FLOAT32_AS_EXACT_AS_TORCH * torch_to_exact), (
      f'{name}: error {to_float32:.1e} to torch float32, {to_exact:.1e} to float64, where '
      f'torch float32 is {torch_to_exact:.1e} from float64')


def torch_features(encoder, x):
  """torchvision ResNet.forward without the fc (the backbone features)."""
  x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
  x = encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))
  return torch.flatten(encoder.avgpool(x), 1)


@pytest.fixture(scope='module', params=list(CASES))
def case(request):
  return request.param


@pytest.fixture(scope='module', autouse=True)
def optimized_programs():
  # These steps run in float64 and at ResNet-50's size, where XLA's optimisations pay:
  # unoptimised, five float64 ResNet-18 SGD steps took 516 s instead of 124 s.
  with helpers.xla_optimizations():
    yield


def torch_outputs(model, batch, dtype):
  """(features of view1, p1, p2, z1, z2, loss) of a copy of the torch model in `dtype`."""
  model = copy.deepcopy(model).to(dtype)
  x1, x2 = (torch_input(batch[v]).to(dtype) for v in ('view1', 'view2'))
  with torch.no_grad():
    features = torch_features(copy.deepcopy(model.encoder), x1)
    p1, p2, z1, z2 = model(x1, x2)
    return features, p1, p2, z1, z2, ref.simsiam_loss(p1, p2, z1, z2)


def to_float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@pytest.mark.parametrize('train_mode', [True, False])
def test_float64_outputs_statistics_and_gradients_are_the_same_computation(case, train_mode):
  config = make_config(case, FLOAT64_BATCH)
  model = make_torch_model(case)
  variables = import_variables(config, model)
  batch = images(config, seed=4)
  model = copy.deepcopy(model).double().train(train_mode)
  x1, x2 = (torch_input(batch[v]).double() for v in ('view1', 'view2'))
  p1, p2, z1, z2 = model(x1, x2)
  loss = ref.simsiam_loss(p1, p2, z1, z2)
  loss.backward()
  expected_grads = {k: p.grad.numpy() for k, p in model.named_parameters()
                    if p.grad is not None}
  with torch.no_grad():
    features = torch_features(copy.deepcopy(model.encoder), x1)

  with jax.enable_x64(True):
    ours = create_model(config.model, dtype=jnp.float64)
    pairs = [tuple(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)) for x in (x1, x2))]
    variables = to_float64(variables)
    # Jitted, as training runs them: op by op, ResNet-50's took 68 s instead of 46 s.
    if train_mode:
      loss_fn = functools.partial(simsiam.loss_fn, apply_fn=ours.apply, config=config)
      (our_loss, (outputs, new_stats)), grads = jax.jit(jax.value_and_grad(
          loss_fn, has_aux=True))(variables['params'], variables['batch_stats'], pairs=pairs)
      outputs = outputs[0]
      our_features, _ = jax.jit(functools.partial(
          ours.apply, train=True, mutable=['batch_stats'], method=ours.features))(
              variables, pairs[0][0])
    else:
      outputs = jax.jit(functools.partial(ours.apply, train=False))(variables, *pairs[0])
      our_features = jax.jit(functools.partial(ours.apply, train=False, method=ours.features))(
          variables, pairs[0][0])
  # In inference mode the folded running mean, stored in float32, enters the outputs.
  tol = tolerances.FLOAT64 if train_mode else tolerances.FLOAT64_INFERENCE
  assert_close(our_features, features.numpy(), tol, 'features')
  for name, expected in (('z1', z1), ('z2', z2), ('p1', p1), ('p2', p2)):
    assert_close(outputs[name], expected.detach().numpy(), tol, name)
  if not train_mode:
    return
  np.testing.assert_allclose(float(our_loss), loss.item(), rtol=tol)
  exported = export_stats(config, {'params': variables['params'], 'batch_stats': new_stats},
                          model)
  expected_state = torch_state(model)
  assert len(exported) > 20
  folded = f'encoder.fc.{3 * config.model.projector_layers - 2}.running_mean'
  for key, value in exported.items():
    # The import stores the folded mean (running mean - frozen bias) in float32.
    assert_close(value, expected_state[key],
                 tolerances.FOLDED_MEAN if key == folded else tol, key)
  exported_grads = torchvision_format.to_torch({'params': grads}, layers(config))
  assert sorted(exported_grads) == sorted(expected_grads)  # Frozen projector bias: no grad.
  for key, value in exported_grads.items():
    assert_close(value, expected_grads[key], tol, key)


@pytest.mark.parametrize('train_mode', [True, False])
def test_float32_features_z_p_and_loss_match(case, train_mode):
  config = make_config(case)
  model = make_torch_model(case)
  variables = import_variables(config, model)
  ours = create_model(config.model)
  batch = images(config, seed=1)
  pairs = simsiam.normalized_view_pairs(batch, config)
  model.train(train_mode)
  expected = torch_outputs(model, batch, torch.float32)
  if train_mode:
    outputs, _ = ours.apply(variables, *pairs[0], train=True, mutable=['batch_stats'])
    features, _ = ours.apply(variables, pairs[0][0], train=True, mutable=['batch_stats'],
                             method=ours.features)
    loss, _ = simsiam.loss_fn(variables['params'], variables['batch_stats'], ours.apply, pairs,
                            config)
  else:
    outputs = ours.apply(variables, *pairs[0], train=False)
    features = ours.apply(variables, pairs[0][0], train=False, method=ours.features)
    loss = -0.5 * (optax.cosine_similarity(outputs['p1'], outputs['z2']).mean() +
                   optax.cosine_similarity(outputs['p2'], outputs['z1']).mean())
  # The loss is a mean of cosines, bounded by 1 and near 0 here: compared absolutely.
  assert abs(float(loss) - float(expected[-1])) <= tolerances.FLOAT32_LOSS
  actual = (features, outputs['p1'], outputs['p2'], outputs['z1'], outputs['z2'])
  names = ('features', 'p1', 'p2', 'z1', 'z2')
  if train_mode:
    # Batch statistics amplify float32 rounding: judged against float64, as torch is.
    exact = torch_outputs(model, batch, torch.float64)
    for name, a, e32, e64 in zip(names, actual, expected, exact):
      assert_as_exact_as_torch(a, e32, e64, name)
  else:
    for name, a, e in zip(names, actual, expected):
      assert_close(a, e, tolerances.FLOAT32, name)


def _torch_sgd_steps(config, model, batches, steps_per_epoch, dtype=torch.float32):
  init_lr = optimizer.initial_learning_rate(config.optim, config.batch_size)
  sgd = ref.official_optimizer(model, init_lr, config.optim.momentum, config.optim.weight_decay)
  model.to(dtype).train()
  for step, batch in enumerate(batches):
    ref.adjust_learning_rate(sgd, init_lr, step // steps_per_epoch, config.num_epochs)
    p1, p2, z1, z2 = model(*(torch_input(batch[v]).to(dtype) for v in ('view1', 'view2')))
    sgd.zero_grad()
    ref.simsiam_loss(p1, p2, z1, z2).backward()
    sgd.step()


def _our_sgd_steps(config, variables, batches, steps_per_epoch, mesh, dtype=jnp.float32):
  """The real jitted train step on `mesh`; a float64 model needs jax.enable_x64."""
  tx = simsiam.create_optimizer(config, steps_per_epoch)
  variables = jax.tree.map(lambda x: np.asarray(x, dtype), variables)
  state = jax.device_put(
      TrainState.create(apply_fn=create_model(config.model, dtype=dtype).apply,
                        params=variables['params'], batch_stats=variables['batch_stats'], tx=tx),
      sharding.replicated(mesh))
  step_fn = train.make_train_step(config, steps_per_epoch, mesh, state)
  losses = []
  for batch in batches:
    state, metrics = step_fn(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    losses.append(float(metrics['loss']))
  return jax.device_get({'params': state.params, 'batch_stats': state.batch_stats}), losses


def _assert_models_match(config, ours, model, tol, floor):
  """Every parameter and running statistic. `floor` makes the error absolute for tensors
  that are near 0 after a few steps: zero-initialised BN biases, and the predictor BN's
  running mean, which is rounding noise (its input, a bias-free linear map of the
  batch-normalised z, has batch mean 0)."""
  expected = torch_state(model)
  exported = torchvision_format.to_torch({'params': ours['params']}, layers(config))
  exported.update(export_stats(config, ours, model))
  assert len(exported) == len([k for k in expected if 'num_batches' not in k]) - 1  # fc bias
  for key, value in exported.items():
    assert_close(value, expected[key], tol, key, floor)


def test_five_float64_sgd_steps_are_the_official_optimizer(case):
  """SGD momentum 0.9, weight decay on every parameter, lr = base * batch / 256 cosine per
  epoch (2 steps per epoch, so the lr changes twice), fixed predictor lr: the real sharded
  train step in float64 against torch in float64, from the official initialisation."""
  config = make_config(case, FLOAT64_BATCH)
  model = make_torch_model(case, randomize_batch_norm=False)
  variables = import_variables(config, model)
  batches = [images(config, seed=10 + i) for i in range(5)]
  with jax.enable_x64(True):
    ours, _ = _our_sgd_steps(config, variables, batches, 2,
                             sharding.create_mesh(jax.devices()[:1]), dtype=jnp.float64)
  _torch_sgd_steps(config, model, batches, 2, torch.float64)
  _assert_models_match(config, ours, model, tolerances.FLOAT64_SGD,
                       floor=tolerances.FLOAT64_SGD_FLOOR)


# ResNet-18 only: ResNet-50's optimizer is the float64 test's, and its float32 steps (within
# 17% of each tensor's change, tolerances.py) took 72 s of the suite here.
@pytest.mark.parametrize('case', ['resnet18_cifar'])
def test_five_float32_sgd_steps_at_the_official_lr_move_each_tensor_as_torch_does(case):
  """The same in float32 at the official lr (0.05 * batch / 256): each parameter tensor
  within tolerances.FLOAT32_SGD_SHARE_OF_CHANGE of its own change over the 5 steps, plus
  float32's rounding of its values. A wrong weight decay or momentum moves a tensor by a
  share of its change (twice the weight decay: all of it, for tensors it dominates)."""
  config = make_config(case)
  config.optim.base_lr = 0.05
  model = make_torch_model(case, randomize_batch_norm=False)
  start = torch_state(model)
  variables = import_variables(config, model)
  batches = [images(config, seed=10 + i) for i in range(5)]
  ours, _ = _our_sgd_steps(config, variables, batches, 2, sharding.create_mesh(jax.devices()[:1]))
  _torch_sgd_steps(config, model, batches, 2)
  expected = torch_state(model)
  exported = torchvision_format.to_torch({'params': ours['params']}, layers(config))
  assert len(exported) > 50
  for key, value in exported.items():
    change = np.abs(expected[key].astype(np.float64) - start[key]).max()
    rounding = 5 * np.finfo(np.float32).eps * np.abs(start[key]).max()
    difference = np.abs(value.astype(np.float64) - expected[key]).max()
    assert difference <= tolerances.FLOAT32_SGD_SHARE_OF_CHANGE * change + rounding, (
        f'{key}: {difference:.2e} from torch, where torch moved it by {change:.2e}')


def test_eight_devices_compute_what_one_torch_process_computes_on_the_whole_batch():
  """Global BatchNorm statistics over the sharded batch are SyncBN's whole-batch ones: the
  loss, and after two steps parameters and running statistics, in float64 (one image per
  device, whose own statistics would be far from the whole batch's)."""
  config = make_config('resnet18_cifar', FLOAT64_BATCH)
  model = make_torch_model('resnet18_cifar', randomize_batch_norm=False)
  variables = import_variables(config, model)
  batches = [images(config, seed=20 + i) for i in range(2)]
  mesh = sharding.create_mesh(jax.devices())
  assert mesh.devices.size == 8
  with jax.enable_x64(True):
    ours, losses = _our_sgd_steps(config, variables, batches, 2, mesh, dtype=jnp.float64)
  model.double().train()
  with torch.no_grad():
    expected_loss = ref.simsiam_loss(*copy.deepcopy(model)(
        *(torch_input(batches[0][v]).double() for v in ('view1', 'view2'))))
  np.testing.assert_allclose(losses[0], float(expected_loss), rtol=tolerances.FLOAT64)
  _torch_sgd_steps(config, model, batches, 2, torch.float64)
  _assert_models_match(config, ours, model, tolerances.FLOAT64_SGD,
                       floor=tolerances.FLOAT64_SGD_FLOOR)


def test_linear_evaluation_steps_match_apex_larc():
  """main_lincls.py --lars: LARC(SGD(lr, momentum 0.9, wd), trust 0.001, clip=False) on fc
  weight and bias, fc initialised N(0, 0.01) and 0, lr cosine per epoch over 3 epochs of 2
  steps. The bias starts at 0, so at step 1 apex leaves its gradient unscaled."""
  config = make_config('resnet18_cifar')
  config.linear.batch_size = 64
  config.linear.num_epochs = 3
  config.linear.weight_decay = 1e-3
  config.linear.lr_schedule = 'cosine_per_epoch'
  steps_per_epoch, num_classes, dim = 2, 10, 32
  rng = np.random.default_rng(0)
  batches = [(rng.normal(size=(64, dim)).astype(np.float32) * 3,
              rng.integers(0, num_classes, 64).astype(np.int32)) for _ in range(6)]

  torch.manual_seed(0)
  fc = torch.nn.Linear(dim, num_classes)
  fc.weight.data.normal_(mean=0.0, std=0.01)
  fc.bias.data.zero_()
  init_lr = config.linear.base_lr * config.linear.batch_size / 256
  sgd = torch.optim.SGD(fc.parameters(), init_lr, momentum=config.linear.momentum,
                        weight_decay=config.linear.weight_decay)
  larc = ref.LARC(sgd, trust_coefficient=.001, clip=False)
  params = {'Dense_0': {'kernel': jnp.asarray(fc.weight.detach().numpy().T),
                        'bias': jnp.asarray(fc.bias.detach().numpy())}}
  classifier = linear_eval.LinearClassifier(num_classes)
  state = TrainState.create(apply_fn=classifier.apply, params=params, batch_stats={},
                            tx=linear_eval.create_optimizer(config.linear, steps_per_epoch))
  step_fn = jax.jit(linear_eval.classifier_step)
  for step, (x, y) in enumerate(batches):
    for group in larc.param_groups:  # main_lincls.py's adjust_learning_rate.
      group['lr'] = init_lr * 0.5 * (1. + np.cos(np.pi * (step // steps_per_epoch) /
                                                 config.linear.num_epochs))
    loss = torch.nn.functional.cross_entropy(fc(torch.from_numpy(x)),
                                             torch.from_numpy(y).long())
    larc.zero_grad()
    loss.backward()
    larc.step()
    state, our_loss = step_fn(state, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(float(our_loss), loss.item(), rtol=tolerances.FLOAT32_LARC)
  assert_close(state.params['Dense_0']['kernel'].T, fc.weight.detach().numpy(),
               tolerances.FLOAT32_LARC, 'weight')
  assert_close(state.params['Dense_0']['bias'], fc.bias.detach().numpy(),
               tolerances.FLOAT32_LARC, 'bias')
  # The trust ratio did its work: a plain SGD step would have moved the weight far more.
  assert np.abs(fc.weight.detach().numpy()).max() < 0.1


def test_linear_eval_optimizer_is_not_optax_lars_order():
  """With a changing lr, momentum before the lr (torch, ours) differs from after (optax)."""
  schedule = lambda step: jnp.where(step < 1, 1.0, 0.1)
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.asarray([0.5, -1.0, 2.0])}
  ours = optimizer.larc_sgd(schedule, momentum=0.9, weight_decay=0.0, trust_coefficient=1.0)
  lars = optax.lars(schedule, weight_decay=0.0, trust_coefficient=1.0, eps=0.0, momentum=0.9)
  updates = {}
  for name, tx in (('ours', ours), ('lars', lars)):
    state = tx.init(params)
    for _ in range(2):
      update, state = tx.update(grads, state, params)
    updates[name] = update['w']
  assert not np.allclose(updates['ours'], updates['lars'])
