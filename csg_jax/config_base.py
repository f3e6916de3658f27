"""Every config field csg_jax reads, with its default. The files in configs/ start from here.

Any field can be overridden on the command line: `--config.csg.target_density=0.1`.
"""

import ml_collections

from csg_jax import data as data_lib


def base_config(data_source: str = "digits") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds initialisation, data order and augmentation
  config.method = "csg"  # "std" (standard training) or "csg" (class-specific gates)
  config.num_epochs = 30.0  # passes over the training split (fractions allowed)
  config.batch_size = 128  # global batch: all devices and processes together
  config.eval_batch_size = 256  # global batch for evaluation (the last one is padded, not dropped)
  config.log_every_steps = 50  # progress line and metrics.jsonl row every N steps
  config.eval_every_steps = 0  # test-split evaluation every N steps (0: only at the end)
  config.checkpoint_every_steps = 500  # checkpoint every N steps (and always at the end)
  config.keep_checkpoints = 3  # newest checkpoints kept on disk
  config.init_from = ""  # start from another run's weights: its workdir or a checkpoints/<step>
  config.init_from_skip = ""  # regex of parameters not taken from init_from, e.g. "^head/"

  config.data = data_lib.default_config(data_source)  # input pipeline (see csg_jax/data)

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet20"  # tiny | resnet{6n+2} (CIFAR) | resnet18/34/50/101/152 (ImageNet)
  config.model.width = 0  # base width (0: the architecture's standard 16 or 64)
  config.model.dtype = "float32"  # trunk compute dtype: float32 | bfloat16 | float16

  config.optimizer = ml_collections.ConfigDict()  # trunk optimiser (STD epochs when alternating)
  config.optimizer.name = "sgd"  # sgd | adam
  config.optimizer.learning_rate = 0.1  # peak learning rate
  config.optimizer.momentum = 0.9  # SGD momentum (0: plain SGD)
  config.optimizer.nesterov = False  # Nesterov momentum for SGD
  config.optimizer.weight_decay = 5e-4  # coupled L2 on conv/dense kernels (0: off)
  config.optimizer.schedule = "cosine"  # cosine | multistep | constant
  config.optimizer.warmup_steps = 0  # linear warm-up steps (cosine only)
  config.optimizer.milestones = (0.5, 0.75)  # multistep: decay points as fractions of training
  config.optimizer.decay_factor = 0.1  # multistep: learning-rate factor at each milestone
  config.optimizer.grad_clip_norm = 0.0  # clip gradients to this global norm (0: off)
  config.optimizer.freeze = ""  # regex over parameter paths kept frozen, e.g. "backbone/stem|stage1"

  config.csg = ml_collections.ConfigDict()  # class-specific gate (method = "csg" only)
  config.csg.schedule = "joint"  # joint (paper's loss every step) | alternate (released code)
  config.csg.gate_init = 0.5  # initial value of every gate entry
  config.csg.csg_weight = 1.0  # lambda1: weight of CE on the CSG path (joint)
  config.csg.sparsity_weight = 0.01  # lambda2: weight of the L1 hinge on G
  config.csg.target_density = 0.1  # d: the hinge is zero while ||G||_1 <= d*C*K
  config.csg.projection = "max_normalize"  # max_normalize (released: column max -> 1) | clip
  config.csg.gate_optimizer = "sgd"  # optimiser of G: sgd | adam
  config.csg.gate_learning_rate = 0.1  # peak learning rate of G (same schedule shape as trunk)
  config.csg.gate_momentum = 0.9  # momentum of G's SGD (0: plain SGD)
  config.csg.warmup_epochs = 10  # alternate: STD-only epochs before the first CSG epoch
  config.csg.period = 3  # alternate: epoch e >= warmup is CSG iff e % period >= min_phase
  config.csg.min_phase = 2  # alternate: see period
  config.csg.csg_optimizer = "adam"  # alternate: optimiser B (CSG epochs) for trunk layers
  config.csg.csg_learning_rate = 1e-3  # alternate: learning rate of optimiser B
  config.csg.csg_freeze = ""  # alternate: extra regex of layers frozen in CSG epochs
  return config
