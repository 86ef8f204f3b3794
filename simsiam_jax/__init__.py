"""SimSiam in JAX/Flax."""
