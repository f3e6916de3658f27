"""The paper's Table 1 setting: ResNet-20 (K = 64) on CIFAR-10, CSG with the joint loss.

CIFAR-10 comes from TFDS by default. To train on a local copy in class folders or a tarball:
  --config.data.source=folder --config.data.path=/path/to/cifar10-jpeg.tar.gz
"""

from csg_jax.config_base import base_config


def get_config():
  config = base_config("tfds")
  config.data.name = "cifar10"  # TFDS name
  config.num_epochs = 200.0  # full schedule; pass --config.num_epochs=2 for a smoke run
  config.batch_size = 128  # global batch
  config.eval_every_steps = 3910  # every 10 epochs
  config.checkpoint_every_steps = 1955  # every 5 epochs
  config.model.name = "resnet20"  # K = 64
  config.optimizer.learning_rate = 0.1  # SGD with momentum 0.9, cosine decay
  config.optimizer.weight_decay = 5e-4  # coupled L2 on kernels
  config.csg.projection = "clip"  # the paper's G in [0, 1] (its density 0.079 < 1/C rules out max_normalize)
  config.csg.csg_weight = 1.0  # lambda1
  config.csg.sparsity_weight = 0.01  # lambda2
  config.csg.target_density = 0.05  # d: L1 budget 0.05 * 10 * 64
  return config
