"""The default run: CSG (joint) on scikit-learn's bundled digits, a small ResNet, CPU-friendly.

No download and no argument needed: `python launch/train.py`. Trains in about a minute on 2 cores.
"""

from csg_jax.config_base import base_config


def get_config():
  config = base_config("digits")
  config.num_epochs = 30.0  # 1 437 training images, so about 340 steps
  config.batch_size = 128  # global batch
  config.log_every_steps = 50  # a progress line every 50 steps
  config.checkpoint_every_steps = 100  # checkpoints at 100, 200, ... and at the end
  config.model.name = "resnet8"  # CIFAR-style ResNet with one block per stage, K = 64 filters
  config.optimizer.learning_rate = 0.1  # SGD, cosine decay
  config.csg.csg_weight = 1.0  # lambda1
  config.csg.sparsity_weight = 0.01  # lambda2
  config.csg.target_density = 0.1  # one class per filter on average (C = 10)
  return config
