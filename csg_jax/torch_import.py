"""PyTorch ResNets as csg_jax models: torchvision and timm weights, and the authors' checkpoints.

  model, variables = load_resnet("resnet152.pth", "resnet152")
  logits = model.apply(variables, images_nhwc, train=False)["logits"]

gives the PyTorch model's eval-mode logits (its input in NCHW) on any input size, because
csg_jax's ImageNet ResNets pad like PyTorch (`model.pytorch_padding`, on by default).

Inputs: a state dict with torchvision's key names (conv1, bn1, layer1.0.conv1,
layer1.0.downsample.0, fc, ...), which timm's ResNets share, as `.safetensors` (read with numpy
only) or as a torch.save file (`.pth`/`.pt`; needs torch, read with weights_only=True so that no
pickled code runs), possibly wrapped as {"model_state_dict": ...} or {"state_dict": ...} and
prefixed `module.` by DataParallel.

The authors' CSGCNN checkpoints (CSG.pt, STD.pt) are such files: {"epoch", "model_state_dict",
"optimizer_state_dict", ...} of a DataParallel torchvision ResNet with a 6-class fc and, for CSG,
the gate `lmask.mask` of shape [K, C] (`LearnableMaskLayer` in their VOCPart/train/
resnet_std.py). Their gate multiplies the layer4 map before the average pool, in training only:
pooling is linear, so csg_jax's gate on the pooled features is the same function, and eval-mode
logits never see it. Their files (torch 1.4) hold BatchNorm's `num_batches_tracked` counters,
which matter only for momentum=None and are skipped.

Mapping: conv weight [O, I, kh, kw] -> kernel [kh, kw, I, O]; BN weight, bias -> scale, bias
(params) and running_mean, running_var -> mean, var (batch_stats), with the same eps (1e-5,
torchvision's and timm's); fc.weight [C, F] -> head kernel [F, C]; lmask.mask [K, C] -> G [C, K].
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from csg_jax import gate as gate_lib
from csg_jax import models
from csg_jax.methods import csg as csg_method
from csg_jax.errors import CSGError

_FORMATS = "a .safetensors file or a PyTorch state dict saved with torch.save (.pth/.pt)"
_WRAPPERS = ("model_state_dict", "state_dict")  # the authors' checkpoints; training frameworks'
_GATE_KEY = "lmask.mask"
_SKIPPED = re.compile(r"(^|\.)num_batches_tracked$")
_BLOCK = re.compile(r"^stage(\d+)_block(\d+)$")
_TORCH_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
_TORCH_MODULE = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc",
                 "shortcut_conv": "downsample.0", "shortcut_bn": "downsample.1"}


def _torch_key(path: tuple[str, ...]) -> str:
  """The torchvision state-dict key of a csg_jax variable path, e.g.
  (params, backbone, stage2_block1, shortcut_conv, kernel) -> layer2.0.downsample.0.weight."""
  if path[0] == gate_lib.GATE_COLLECTION:
    return _GATE_KEY
  *modules, leaf = [p for p in path[1:] if p != "backbone"]
  names = []
  for module in modules:
    block = _BLOCK.match(module)
    names.append(f"layer{block.group(1)}.{int(block.group(2)) - 1}" if block
                 else _TORCH_MODULE.get(module, module))
  return ".".join(names + [_TORCH_LEAF[leaf]])


def _to_ours(array: np.ndarray) -> np.ndarray:
  """A torch tensor in csg_jax's layout: conv kernels HWIO, dense kernel and gate transposed."""
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  return array.T if array.ndim == 2 else array


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a csg_jax variable shape (inverse of `_to_ours`)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def _error_summary(error: Exception) -> str:
  """'<error type>: <first line of its message>'."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  return safetensors_numpy.load_file(path)


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CSGError(f"{path} is a PyTorch checkpoint: reading it needs torch (pip install "
                   "'csg_jax[torch]'), or convert it to .safetensors") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(obj, dict):
    obj = next((obj[w] for w in _WRAPPERS if isinstance(obj.get(w), dict)), obj)
  if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
    raise ValueError("it holds no state dict (a dict of tensors, possibly under "
                     f"{' or '.join(repr(w) for w in _WRAPPERS)})")
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in obj.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a .safetensors or torch.save file, `module.` prefixes removed.

  The format is told by the first bytes, not the name: safetensors starts with an 8-byte header
  length and '{'; torch.save writes a zip archive (before torch 1.6: a pickle).
  """
  try:
    with open(path, "rb") as f:
      head = f.read(9)
  except OSError as e:
    raise CSGError(f"cannot read {path!r} ({e.strerror}); pass {_FORMATS}") from None
  if len(head) == 9 and head[8:9] == b"{":
    reader, what = _read_safetensors, "a .safetensors file"
  elif head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
    reader, what = _read_torch, "a PyTorch checkpoint"
  else:
    raise CSGError(f"{path} is not {_FORMATS} (it starts with {head!r})")
  try:
    tensors = reader(path)
  except CSGError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Truncated archives, pickles that weights_only refuses, bad headers: one line each.
    raise CSGError(f"{path} looks like {what} but cannot be read ({_error_summary(e)[:300]}); it "
                   f"must be a complete {_FORMATS}") from None
  return {k.removeprefix("module."): np.asarray(v) for k, v in tensors.items()
          if not _SKIPPED.search(k)}


def _architecture_of(keys) -> str:
  """The torchvision ResNet whose key names these are, e.g. "resnet50", or "" for none."""
  blocks = {}
  for key in keys:
    match = _TORCH_BLOCK.match(key)
    if match:
      stage = int(match.group(1))
      blocks[stage] = max(blocks.get(stage, 0), int(match.group(2)) + 1)
  layout = ("bottleneck" if any(".conv3." in k for k in keys) else "basic",
            tuple(blocks.get(stage, 0) for stage in range(1, 5)))
  return next((f"resnet{d}" for d, spec in models.IMAGENET_RESNETS.items() if spec == layout), "")


def _hint(keys, model_name: str) -> str:
  found = _architecture_of(keys)
  return f" (its keys are those of a {found})" if found and found != model_name else ""


def _listed(items, sep: str = ", ", limit: int = 4) -> str:
  return sep.join(items[:limit]) + (f"{sep}... ({len(items)} in all)" if len(items) > limit else "")


def load_resnet(path: str, model_name: str,
                num_classes: int | None = None) -> tuple[models.Classifier, dict[str, Any]]:
  """(model, variables) of a torchvision-layout ResNet file, equal to it in eval mode.

  `model_name` is resnet18/34/50/101/152. The base width is read from conv1 (reduced-width nets
  load too), the class count from fc (`num_classes`, when given, must agree). The model has a
  gate exactly when the file has `lmask.mask`; `variables["gates"]` then holds its transpose.
  A key the model lacks, a parameter the file lacks or a shape that does not fit is a CSGError
  naming the key.
  """
  backbone, _ = models.build_backbone(model_name)  # an unknown name is a CSGError
  if not isinstance(backbone, models.ResNet) or backbone.cifar_stem:
    raise CSGError(f"{model_name!r} is not a torchvision architecture; import as one of "
                   f"{', '.join(f'resnet{d}' for d in models.IMAGENET_RESNETS)} "
                   "(set --config.model.name)")
  tensors = read_state_dict(path)
  for key, rank in (("conv1.weight", 4), ("fc.weight", 2)):
    if key not in tensors or tensors[key].ndim != rank:
      found = "missing" if key not in tensors else f"of shape {tensors[key].shape}"
      raise CSGError(f"{path}: {key} is {found}; a torchvision {model_name} has a rank-{rank} "
                     f"{key}{_hint(tensors, model_name)}")
  width, in_channels = tensors["conv1.weight"].shape[:2]
  classes, filters = tensors["fc.weight"].shape
  if num_classes is not None and num_classes != classes:
    raise CSGError(f"{path}: fc.weight has shape {tensors['fc.weight'].shape}, a {classes}-class "
                   f"head, but {num_classes} classes were asked for; import it as it is and "
                   "fine-tune a new head with --config.init_from_skip='^head/'")
  if _GATE_KEY in tensors and tensors[_GATE_KEY].shape != (filters, classes):
    raise CSGError(f"{path}: the gate {_GATE_KEY} has shape {tensors[_GATE_KEY].shape} but the "
                   f"head fc.weight {tensors['fc.weight'].shape} needs [K, C] = "
                   f"{(filters, classes)}")

  backbone, k = models.build_backbone(model_name, width=int(width), pytorch_padding=True)
  gate = csg_method.GatedPath(int(classes), k) if _GATE_KEY in tensors else None
  model = models.Classifier(backbone, int(classes), k, gate=gate)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, in_channels), jnp.float32))
  wanted = {_torch_key(p): (p, s.shape) for p, s in traverse_util.flatten_dict(shapes).items()}
  unknown = sorted(set(tensors) - set(wanted))
  missing = sorted(set(wanted) - set(tensors))
  if unknown or missing:
    what = ([f"unknown key(s) {_listed(unknown)}"] if unknown else []) + (
        [f"missing key(s) {_listed(missing)}"] if missing else [])
    raise CSGError(f"{path} is not a torchvision {model_name}: {'; '.join(what)}"
                   f"{_hint(tensors, model_name)}")
  wrong = [f"{key} has shape {tensors[key].shape} but {model_name} at width {width} needs "
           f"{_torch_shape(shape)}" for key, (_, shape) in sorted(wanted.items())
           if tensors[key].shape != _torch_shape(shape)]
  if wrong:
    raise CSGError(f"{path} does not fit {model_name}: {_listed(wrong, '; ')}"
                   f"{_hint(tensors, model_name)}")
  variables = {target: jnp.asarray(_to_ours(tensors[key].astype(np.float32)))
               for key, (target, _) in wanted.items()}
  return model, traverse_util.unflatten_dict(variables)
