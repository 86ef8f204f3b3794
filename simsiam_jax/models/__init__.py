from simsiam_jax.models.simsiam import SimSiam, create_model
__all__ = ["SimSiam", "create_model"]
