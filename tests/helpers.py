"""Set-up shared by the test modules."""

import jax

from simsiam_jax import methods, optimizer, train


def state_and_step(config, mesh, steps_per_epoch: int, num_train_examples: int | None = None):
  """(initial train state of config.method on `mesh`, its jitted train step), as the loop
  makes them; the memory bank has a row per image of config.data.synthetic_train_examples
  unless `num_train_examples` says otherwise."""
  tx = optimizer.create_optimizer(config, steps_per_epoch)
  num_train_examples = num_train_examples or config.data.synthetic_train_examples
  state = methods.get(config.method).create_train_state(jax.random.key(config.seed), config,
                                                        tx, mesh, num_train_examples)
  return state, train.make_train_step(config, steps_per_epoch, mesh, state)
