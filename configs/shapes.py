"""Synthetic shapes (csg_jax/shapes.py, 32x32, 6 classes, exact object masks), small ResNet.

Sized so that STD and CSG each train in a few minutes on 2 CPU cores; the applications
(localization, adversarial detection) then run on the result. Generate the data first:

  python -m csg_jax.shapes --root data/shapes32 --num_train 5000 --num_test 1000
  python launch/train.py --config configs/shapes.py --config.method=std --workdir workdirs/shapes_std

See benchmarks/applications_shapes.sh for the whole pipeline.
"""

from csg_jax.config_base import base_config


def get_config():
  config = base_config("folder")
  config.data.path = "data/shapes32"  # folder written by `python -m csg_jax.shapes --root ...`
  config.data.num_classes = 6  # circle, cross, ring, square, star, triangle
  config.data.crop_padding = 2  # small shifts only: shapes may touch the border
  config.data.flip = True  # every class is closed under a mirror image
  config.data.mean = (0.5, 0.5, 0.5)  # train-split statistics (shapes meta.json: 0.4997..0.5001)
  config.data.std = (0.206, 0.206, 0.206)  # train-split statistics (meta.json: 0.2055..0.2065)
  config.num_epochs = 12.0  # about 470 steps of 128 on 5 000 images
  config.batch_size = 128  # global batch
  config.eval_batch_size = 250  # global eval batch (1 000 test images: 4 batches)
  config.log_every_steps = 50  # a progress line every 50 steps
  config.checkpoint_every_steps = 200  # checkpoints at 200, 400 and the end
  config.model.name = "resnet8"  # CIFAR-style ResNet, one block per stage, 8x8 last map at 32 px
  config.model.width = 16  # K = 64 filters in the last layer
  config.optimizer.learning_rate = 0.1  # SGD with momentum 0.9, cosine decay
  config.optimizer.weight_decay = 5e-4  # coupled L2 on kernels
  config.csg.schedule = "joint"  # the paper's loss every step
  config.csg.csg_weight = 1.0  # lambda1
  config.csg.sparsity_weight = 0.01  # lambda2
  config.csg.target_density = 0.2  # L1 budget 0.2 * C * K: a little over one class per filter
  return config
