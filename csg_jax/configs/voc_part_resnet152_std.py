"""The STD baseline of the authors' released procedure (configs/voc_part_resnet152.py).

Same data, ImageNet start, optimiser A and schedule; no gate, so every epoch is an STD epoch. The
released code trains its top 5 child modules: without the gate module that is layer2 and up
(with it, layer3 and up), so one more stage is trainable here than in the CSG run's STD epochs.
Imported weights and data as in configs/voc_part_resnet152.py, then:

  python launch/train.py --config configs/voc_part_resnet152_std.py --config.data.path=data/voc_part
"""

from csg_jax.config import load_config_file


def get_config():
  config = load_config_file("voc_part_resnet152")  # the shipped config it builds on
  config.method = "std"  # standard training, the released STD run (ifmask False)
  config.optimizer.freeze = r"^backbone/(stem_|stage1_)"  # layer2, layer3, layer4, fc train
  return config
