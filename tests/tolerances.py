"""The tolerances the PyTorch parity tests (tests/test_torch_parity.py) assert, in one place.

README.md and docs/pytorch.md quote them, and tests/test_tolerances_quoted.py checks that
they still do. Errors are normwise, max |ours - torch| / max |torch| per tensor, unless said.
"""

# Float64 on both sides: the same computation, no rounding to hide a difference behind.
FLOAT64 = 1e-10  # Train-mode outputs, loss, BatchNorm statistics, every gradient.
FLOAT64_INFERENCE = 1e-8  # Eval-mode outputs: the folded running mean is stored in float32.
FOLDED_MEAN = 1e-7  # That folded running mean itself.
FLOAT64_SGD = 1e-9  # Parameters after SGD steps (absolute below FLOAT64_SGD_FLOOR).
FLOAT64_SGD_FLOOR = 1e-3

# Float32: the numbers training produces. XLA's Eigen convolutions (the project's CPU
# default, simsiam_jax/scale/xla_flags.py) round differently from oneDNN's; through
# BatchNorm on batch statistics the outputs differ by up to 3.5e-5 (z2 of ResNet-18 CIFAR in
# train mode, where torch's float32 is 3.5e-6 from float64), where jaxlib's YNNPACK
# convolutions stayed under 1e-5.
FLOAT32 = 5e-5  # Eval-mode outputs; train-mode ones where torch's float32 is this close.
# Train-mode outputs otherwise (a deep net on batch statistics is ill-conditioned in
# float32: torch's own ResNet-50 is about 2e-4 from float64): as close to float64 as torch's
# float32 is, within this factor.
FLOAT32_AS_EXACT_AS_TORCH = 3
FLOAT32_LOSS = 1e-5  # Absolute: a mean of cosines near 0.
# Parameters after SGD steps at the official lr: each tensor within this share of its own
# change over the steps (plus 5 float32 roundings of its values), so that a wrong weight
# decay or momentum, which moves a tensor by a share of its change, fails. Measured
# (2026-12-02): ResNet-18 within 1.7%, ResNet-50 within 17% (the last BatchNorm biases of
# its blocks, whose change is a sum that nearly cancels); twice the weight decay moves a
# tensor of either by all of its change, momentum 0.8 by 35% (ResNet-18) and 31% (ResNet-50).
FLOAT32_SGD_SHARE_OF_CHANGE = 0.25
FLOAT32_LARC = 1e-5  # Linear-evaluation classifier after LARC steps, and its loss.
