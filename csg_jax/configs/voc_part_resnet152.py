"""The authors' released procedure: ResNet-152 on VOC Part animals (6 classes, 128x128 crops).

Alternating STD/CSG epochs with two Adam optimisers, lower layers frozen, starting from
ImageNet-pretrained weights. Those are torchvision's, imported once into a workdir (the STD
baseline is configs/voc_part_resnet152_std.py):

  python launch/import_torch.py --weights resnet152-394f9c45.pth \
      --config.model.name=resnet152 --workdir workdirs/resnet152_imagenet
  python launch/build_voc_part.py --voc_root VOCdevkit/VOC2010 \
      --annotations_dir Annotations_Part --out data/voc_part
  python launch/train.py --config configs/voc_part_resnet152.py --config.data.path=data/voc_part

init_from is relative to the folder training runs in; point it elsewhere with
--config.init_from=<workdir>.
"""

from csg_jax.config import base_config


def get_config():
  config = base_config("folder")
  config.data.image_size = 128  # square crops around each object
  config.data.num_classes = 6  # bird, cat, cow, dog, horse, sheep
  config.data.crop_padding = 16  # size / 8, as released
  config.data.mean = (0.485, 0.456, 0.406)  # ImageNet statistics
  config.data.std = (0.229, 0.224, 0.225)  # ImageNet statistics
  config.num_epochs = 151.0  # epochs 0..150
  config.batch_size = 32  # global batch
  config.eval_batch_size = 64  # global eval batch
  config.checkpoint_every_steps = 1000  # steps between checkpoints
  config.init_from = "workdirs/resnet152_imagenet"  # ImageNet weights from launch/import_torch.py
  config.init_from_skip = "^head/"  # a new 6-class head (the gate starts fresh: none there)
  config.model.name = "resnet152"  # K = 2048
  config.optimizer.name = "adam"  # optimiser A, STD epochs
  config.optimizer.learning_rate = 1e-5  # optimiser A learning rate
  config.optimizer.weight_decay = 0.0  # none, as released
  config.optimizer.schedule = "multistep"  # x0.1 at each milestone, counted in its own epochs
  # Each optimiser's MultiStepLR([60, 90, 120]) stepped once per epoch of its own phase
  # (VOCPart/train/train.py lines 369-370 and 193-196): optimiser A decays after its 60th and
  # 90th STD epoch; optimiser B and G (47 CSG epochs) never decay.
  config.optimizer.milestone_epochs = (60, 90, 120)
  config.optimizer.freeze = r"^backbone/(stem_|stage1_|stage2_)"  # STD epochs: stage3, stage4, head
  config.csg.schedule = "alternate"  # the released epoch rule
  config.csg.alternate.warmup_epochs = 10  # STD-only epochs first
  config.csg.alternate.period = 3  # CSG epoch iff epoch % 3 >= 2
  config.csg.alternate.min_phase = 2  # see period
  config.csg.alternate.optimizer = "adam"  # optimiser B, CSG epochs
  config.csg.alternate.learning_rate = 1e-3  # optimiser B learning rate (top layers)
  config.csg.alternate.freeze = r"^backbone/stage3_"  # CSG epochs: stage4, head, G train
  config.csg.gate.optimizer = "adam"  # G is in optimiser B as released
  config.csg.gate.learning_rate = 1e-3  # same learning rate as optimiser B
  config.csg.gate.sparsity_weight = 1e-3  # hinge weight in CSG epochs
  config.csg.gate.target_density = 0.2  # L1 budget 0.2 * C * K
  config.csg.gate.projection = "released"  # clip_lmask exactly: column max -> 1 every CSG step
  config.csg.gate.l1_subgradient = "torch"  # torch.norm(mask, p=1): 0 at G = 0
  config.std_config = "voc_part_resnet152_std"  # csg-compare's STD run: the released baseline
  return config
