"""The default run: CSG (joint) on scikit-learn's bundled digits, a small ResNet, CPU-friendly.

No download and no argument needed: `python launch/train.py`. About a minute on 2 CPU cores.
The STD baseline is the same command with --config.method=std.
"""

from csg_jax.config import base_config


def get_config():
  config = base_config("digits")
  config.num_epochs = 100.0  # 1 437 training images: 1 123 steps
  config.batch_size = 128  # global batch
  config.log_every_steps = 100  # a progress line every 100 steps
  config.checkpoint_every_steps = 250  # checkpoints at 250, 500, ... and at the end
  config.model.name = "resnet8"  # CIFAR-style ResNet with one block per stage, K = 64 filters
  config.optimizer.learning_rate = 0.1  # SGD, momentum 0.9, cosine decay
  config.csg.gated_loss_weight = 1.0  # lambda1
  config.csg.gate.sparsity_weight = 0.1  # lambda2: pushes the gate to its budget within ~100 steps
  config.csg.gate.target_density = 0.1  # d = 1/C: with max_normalize, one class per filter
  config.csg.gate.learning_rate = 3.0  # fast gate: the filter-class split settles early
  return config
