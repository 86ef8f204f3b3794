from simsiam_jax.models.simsiam import SimSiam, create_model
