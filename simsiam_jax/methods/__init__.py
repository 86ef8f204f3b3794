"""The self-supervised methods the training loop runs; `config.method` names one.

A method is a module with plain functions, so that the loop (train.py) knows none of them,
and a TITLE for reports:

  validate(config)                      raises ConfigError on a bad method field.
  create_network(config) -> the network whose 'backbone' and 'projector' (method='encode')
      make the encoder f, with the method's heads.
  create_optimizer(config, steps_per_epoch) -> optax.GradientTransformation
  create_train_state(rng, config, tx, mesh, num_train_examples) -> TrainState
      the online network (its 'backbone' is what kNN and linear evaluation read) and
      whatever else the method keeps (train_state.method_state: a target network, a memory
      bank, a queue), initialised in place on the mesh.
  train_step_fn(config, steps_per_epoch) -> step(state, batch) -> (state, metrics)
      one update on a global batch of uint8 views; metrics hold at least 'loss' and
      'z_std' (the collapse monitor). The loop jit-compiles it over the mesh.
"""

from types import ModuleType

from simsiam_jax.config_validation import ConfigError
from simsiam_jax.methods import byol, moco_v2, simclr, simsiam, swav

# SimSiam and the methods its Table 4 compares it with; each has its own config.<name>.
METHODS = {'simsiam': simsiam, 'simclr': simclr, 'moco_v2': moco_v2, 'byol': byol, 'swav': swav}


def get(name: str) -> ModuleType:
  if name not in METHODS:
    raise ConfigError(f'config.method={name!r}: choose one of {", ".join(METHODS)}')
  return METHODS[name]
