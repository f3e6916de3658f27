r"""Imports a PyTorch ResNet (torchvision, timm, or the authors' CSG.pt/STD.pt) as a workdir.

  csg-import-torch --weights resnet152-394f9c45.pth --config.model.name=resnet152 \
      --workdir workdirs/resnet152_imagenet
  csg-train --config configs/voc_part_resnet152.py --config.data.path=data/voc_part
      # (that config sets init_from=workdirs/resnet152_imagenet, init_from_skip='^head/')

  csg-import-torch --weights CSG.pt --config configs/voc_part_resnet152.py \
      --config.data.source=voc_part_released --config.data.path=preprocessed_VOC_Part \
      --workdir workdirs/authors_csg
  csg-evaluate --workdir workdirs/authors_csg

The authors' checkpoints go with their released data (voc_part_released), which keeps their
class order; the crops rebuilt by csg-build-voc-part are read in alphabetical order (cow before
dog), so their heads' dog and cow rows would be read as each other's there.

The workdir holds config.json (the --config, default configs/default.py, with the overrides, and
the model's width and method read from the file: csg when it has the authors' gate lmask.mask,
else std), imported.json (what the weights need: model, base width, input channels, classes)
and a step-0 checkpoint of the whole train state, as training writes them. csg-evaluate and
csg-applications evaluate it when the config's data has the channels and classes the weights
need: a data.num_classes that differs is refused here, a channel count known here that differs
(data.mean's, or the source's: digits has 1) is a warning, since the workdir still serves
`--config.init_from=W` (with --config.init_from_skip='^head/' for a new head, and the
--config.model.width the import prints for a reduced-width net). `.safetensors` files need
only numpy; `.pth`/`.pt` files need torch (pip install 'csg_jax[torch]') and are read with
weights_only=True.
From a checkout without `pip install -e .`: python launch/import_torch.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax.log import log

_CONFIG = cli.define_config_flag()
_WEIGHTS = flags.DEFINE_string("weights", None, "The PyTorch file: .pth/.pt (torch.save) or "
                               ".safetensors, with torchvision's ResNet key names.", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The new workdir to write; one that already "
                               "holds a run is refused.", required=True)


def main(argv):
  config = cli.start(argv, _CONFIG)
  with cli.user_errors():
    # Imported here so that --help and flag errors answer without loading JAX.
    from csg_jax import models  # pylint: disable=g-import-not-at-top
    from csg_jax.cli import torch_workdir  # pylint: disable=g-import-not-at-top
    workdir = _WORKDIR.value
    imported = torch_workdir.read(config, _WEIGHTS.value, workdir)
    channels, classes = imported.record["input_channels"], imported.record["num_classes"]
    data_channels = torch_workdir.data_channels(config.data)
    if data_channels not in (None, channels):
      log(f"warning: {_WEIGHTS.value}'s conv1 takes {channels} input channels but this config's "
          f"data ({config.data.source}) has {data_channels}: {workdir} serves as "
          "--config.init_from, but evaluating it needs a config whose data has "
          f"{channels} channels")
    torch_workdir.write(imported, workdir)
  width = config.model.width
  standard = models.build_backbone(config.model.name)[0].base_width
  log(f"imported {_WEIGHTS.value} as {torch_workdir.summary(imported, workdir)}; evaluate it on "
      f"data of {channels} channels and {classes} classes, "
      f"or fine-tune from it with --config.init_from={workdir} "
      f"--config.model.name={config.model.name}"
      f"{f' --config.model.width={width}' if width != standard else ''} "
      "(and --config.init_from_skip='^head/' for a new head)")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
