"""Synthetic shapes (csg_jax/data/shapes.py, 32x32, 6 classes, exact object masks), small ResNet.

Sized so that STD and CSG each train in a few minutes on 2 CPU cores; the applications
(localization, adversarial detection) then run on the result. Generate the data first:

  python launch/build_shapes.py --root data/shapes32 --num_train 4000 --num_test 1000
  python launch/train.py --config configs/shapes.py --config.method=std \
      --workdir workdirs/shapes_std

See benchmarks/applications_shapes.sh for the whole pipeline.
"""

from csg_jax.config import base_config


def get_config():
  config = base_config("folder")
  config.data.path = "data/shapes32"  # folder written by `python launch/build_shapes.py --root ...`
  config.data.num_classes = 6  # circle, cross, ring, square, star, triangle
  config.data.crop_padding = 2  # small shifts only: shapes may touch the border
  config.data.flip = True  # every class is closed under a mirror image
  config.data.mean = (0.417, 0.418, 0.415)  # train-split statistics (shapes meta.json)
  config.data.std = (0.244, 0.243, 0.244)  # train-split statistics (shapes meta.json)
  config.num_epochs = 6.0  # 375 steps of 64 on 4 000 images: about 1.5 min on 2 CPU cores
  config.batch_size = 64  # global batch: more steps per epoch learn faster than bigger batches
  config.eval_batch_size = 250  # global eval batch (1 000 test images: 4 batches)
  config.log_every_steps = 50  # a progress line every 50 steps
  config.checkpoint_every_steps = 200  # a checkpoint at step 200 and at the end
  config.model.name = "resnet8"  # CIFAR-style ResNet, one block per stage, 8x8 last map at 32 px
  config.model.width = 16  # K = 64 filters in the last layer
  config.optimizer.learning_rate = 0.1  # SGD with momentum 0.9, cosine decay
  config.optimizer.weight_decay = 5e-4  # coupled L2 on kernels
  config.csg.schedule = "joint"  # the paper's loss every step
  config.csg.gated_loss_weight = 1.0  # lambda1
  config.csg.gate.sparsity_weight = 0.1  # lambda2: pushes the gate to its budget early in training
  config.csg.gate.target_density = 1 / 6  # d = 1/C: with max_normalize, one class per filter
  config.csg.gate.learning_rate = 3.0  # fast gate: the filter-class split settles early
  return config
