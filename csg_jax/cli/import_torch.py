r"""Imports a PyTorch ResNet (torchvision, timm, or the authors' CSG.pt/STD.pt) as a workdir.

  csg-import-torch --weights resnet152-394f9c45.pth --config.model.name=resnet152 \
      --workdir workdirs/resnet152_imagenet
  csg-train --config configs/voc_part_resnet152.py --config.data.path=/data/voc_part
      # (that config sets init_from=workdirs/resnet152_imagenet, init_from_skip='^head/')

  csg-import-torch --weights CSG.pt --config configs/voc_part_resnet152.py \
      --config.data.path=/data/voc_part --workdir workdirs/authors_csg
  csg-evaluate --workdir workdirs/authors_csg

The workdir holds config.json (the --config, default configs/default.py, with the overrides, and
the model's width and method read from the file: csg when it has the authors' gate lmask.mask,
else std) and a step-0 checkpoint of the whole train state, as training writes them.
`--config.init_from=W` takes its weights (with --config.init_from_skip='^head/' for a new head);
csg-evaluate and csg-applications evaluate it directly when the config's data has as many
classes as its head. `.safetensors` files need only numpy; `.pth`/`.pt` files need torch (pip
install 'csg_jax[torch]') and are read with weights_only=True.
From a checkout without `pip install -e .`: python launch/import_torch.py ...
"""

from absl import flags

from csg_jax import cli
from csg_jax import config as config_lib
from csg_jax.errors import CSGError
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
    from csg_jax import runs  # pylint: disable=g-import-not-at-top
    from csg_jax import torch_import  # pylint: disable=g-import-not-at-top
    workdir = _WORKDIR.value
    runs.check_new_workdir(workdir)
    if not config.model.pytorch_padding:
      raise CSGError("config.model.pytorch_padding is False: PyTorch weights need PyTorch's "
                     "padding to give their logits (leave it at True)")
    model, variables = torch_import.load_resnet(_WEIGHTS.value, config.model.name,
                                                config.data.num_classes)
    width = model.backbone.base_width
    if config.model.width not in (0, width):
      raise CSGError(f"config.model.width is {config.model.width} but {_WEIGHTS.value} has base "
                     f"width {width} (its conv1); leave model.width at 0")
    config.model.width = width
    config.method = "csg" if model.use_gate else "std"
    config_lib.validate(config)
    cli.check_workdir(workdir)
    runs.save_as_run(config, variables, workdir)
  log(f"imported {_WEIGHTS.value} as {config.method} {config.model.name} (width {width}, "
      f"{model.num_classes} classes, K = {model.num_filters}) into {workdir}; fine-tune with "
      f"--config.init_from={workdir} (--config.init_from_skip='^head/' for a new head)")


def run():
  cli.run(main)


if __name__ == "__main__":
  run()
