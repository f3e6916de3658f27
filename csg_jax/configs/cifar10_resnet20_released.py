"""The released train.py's argparse defaults (hyliang96/CSGCNN, VOCPart/train/train.py lines 33-57,
with the optimisers of lines 357-370 and the gate of resnet_std.py lines 102-134) on CIFAR-10 with
ResNet-20: the authors' CSG procedure as their code would run it if its CIFAR path worked.

Taken as released:
  - batch 64, --epoch 200, which the loop `while epoch <= num_epochs` (train.py line 131) runs
    as 201 epochs, 0..200; --optim's default is "adam" (not SGD): Adam lr 0.1 for the STD
    optimiser, Adam lr_reg 1.0 for the CSG optimiser (which also holds the gate), no weight
    decay (train.py line 361-362);
  - MultiStepLR at 40/60/80 % of --epoch (80, 120, 160), each stepped once per epoch of its own
    phase (lines 193-196): over the 201 epochs the STD optimiser sees 73 epochs and never
    decays, the CSG optimiser sees 128 and decays at its 80th and 120th;
  - the alternate epoch rule: 10 warm-up STD epochs, then epoch e is a CSG epoch iff
    e % 3 >= 1 (--mask_epoch_min's default is 1; run.py's VOC runs pass 2);
  - CSG epochs minimise CE(gated logits) + 1e-3 * max(0, ||G||_1 - 0.2 * C * K) (lambda_reg, and
    the budget 0.2 hard-coded in loss_function), with torch.norm's subgradient (0 at G = 0);
    G starts at 0.5 and after every CSG step each filter's row is divided by its max and
    clipped to [0, 1] (clip_lmask, exactly: a negative max reopens the row, a zero max is NaN);
  - MIS with the estimator's random_state 0 (mutualinfo.py lines 110-112), as every config;
  - augmentation and normalisation of dataLoader.py lines 21-33 (random crop with padding 4,
    horizontal flip, mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)).

Where it departs, because the released defaults cannot run on CIFAR-10 as a whole:
  - `resent(depth=20)` raises (resnet_std.py lines 308-319 build only 18/34/50/101/152) and
    train.py asserts --img_size 128 (line 317): csg_jax's CIFAR ResNet-20 (K = 64) at 32x32;
  - --frozen True freezes all but the top 5 (STD) / 4 (CSG) children of an ImageNet-pretrained
    model; no pretrained ResNet-20 exists, so from scratch every layer trains in both phases.

Measured (benchmarks/RESULTS.md, "Three configs by provenance"): on the reduced 3-epoch schedule
these defaults do not train: Adam at lr 1.0 saturates the gated loss in the first CSG epoch and
the STD path ends at chance. Use it to study the released procedure, not as a CIFAR-10 recipe.

For the SGD branch of the same file (train.py lines 357-359: Nesterov momentum 0.9 and weight
decay 1e-4 on every parameter of both optimisers' groups, biases, batch norm and the gate
included):
  --config.optimizer.name=sgd --config.optimizer.momentum=0.9 --config.optimizer.nesterov=True
  --config.optimizer.weight_decay=1e-4 --config.optimizer.decay_every_parameter=True
  --config.csg.alternate.optimizer=sgd --config.csg.gate.optimizer=sgd
  --config.csg.gate.momentum=0.9 --config.csg.gate.nesterov=True --config.csg.gate.weight_decay=1e-4
"""

from csg_jax.config import base_config


def get_config():
  config = base_config("tfds")
  config.data.name = "cifar10"  # TFDS name (or data.source=folder with data.path)
  config.data.mean = (0.4914, 0.4822, 0.4465)  # dataLoader.py line 25
  config.data.std = (0.2023, 0.1994, 0.2010)  # dataLoader.py line 25, as released
  config.num_epochs = 201.0  # --epoch 200: `while epoch <= num_epochs` runs epochs 0..200
  config.batch_size = 64  # --batch_size 64
  config.eval_every_steps = 7820  # every 10 epochs
  config.checkpoint_every_steps = 3910  # every 5 epochs
  config.model.name = "resnet20"  # --depth 20 (K = 64)
  config.optimizer.name = "adam"  # --optim's default: the STD optimiser
  config.optimizer.learning_rate = 0.1  # --lr
  config.optimizer.weight_decay = 0.0  # Adam without weight decay (line 361)
  config.optimizer.schedule = "multistep"  # MultiStepLR, gamma 0.1
  config.optimizer.milestone_epochs = (80, 120, 160)  # 0.4/0.6/0.8 * 200, in own epochs
  config.csg.schedule = "alternate"  # STD and CSG epochs, two optimisers
  config.csg.alternate.warmup_epochs = 10  # --warmup_epochs
  config.csg.alternate.period = 3  # --mask_period
  config.csg.alternate.min_phase = 1  # --mask_epoch_min's default
  config.csg.alternate.optimizer = "adam"  # the CSG optimiser (optimizer_reg)
  config.csg.alternate.learning_rate = 1.0  # --lr_reg
  config.csg.gate.optimizer = "adam"  # G is in optimizer_reg
  config.csg.gate.learning_rate = 1.0  # --lr_reg
  config.csg.gate.sparsity_weight = 1e-3  # --lambda_reg
  config.csg.gate.target_density = 0.2  # loss_function's hard-coded 0.2
  config.csg.gate.projection = "released"  # clip_lmask exactly
  config.csg.gate.l1_subgradient = "torch"  # torch.norm(mask, p=1): 0 at G = 0
  return config
