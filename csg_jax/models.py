"""Backbones (CIFAR- and ImageNet-style ResNets, a tiny CNN) and the classifier around them.

A backbone is any linen module called as `backbone(x, train=...)` that returns the last conv
layer's activation [B, H, W, K] after its ReLU. `Classifier` adds global average pooling, the
linear head and what the training method adds (methods/*.py: CSG's gate, PICNN's extra conv and
Θ).
"""

import functools
import re
from typing import Any
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax.numpy as jnp

from csg_jax.errors import CSGError

ModuleDef = Any

_RESNET = re.compile(r"^resnet(\d+)$")
# ImageNet-style depths -> (block type, blocks per stage).
IMAGENET_RESNETS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class BasicBlock(nn.Module):
  """Two 3x3 convs with a projection shortcut when the shape changes."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  padding: Any  # of the 3x3 convs: "SAME" or explicit pairs (see ResNet.pytorch_padding)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=self.padding,
                  name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=self.padding, name="conv2")(y)
    # Zero-init the last BN scale so each block starts as the identity (stabler deep nets).
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides),
                           name="shortcut_conv")(residual)
      residual = self.norm(name="shortcut_bn")(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels), the ResNet-50+ block."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  padding: Any  # of the 3x3 conv: "SAME" or explicit pairs (see ResNet.pytorch_padding)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, (1, 1), name="conv1")(x)))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=self.padding,
                  name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides),
                           name="shortcut_conv")(residual)
      residual = self.norm(name="shortcut_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Returns the last stage's activation map [B, H, W, K].

  `cifar_stem=True` is the CIFAR layout (3x3 stem, no max-pool, stages of 16/32/64 x width);
  otherwise the ImageNet layout (7x7/2 stem, 3x3/2 max-pool, stages of 64..512 x width).

  `pytorch_padding=True` pads every 3x3 conv and the max-pool by one pixel on each side, as
  PyTorch does, so that imported torchvision weights give PyTorch's logits. With False they use
  "SAME", which pads a stride-2 window on an even size by (0, 1): the layout of runs written
  before the field existed. Parameter shapes are the same either way.
  """
  stage_sizes: Sequence[int]
  block: str
  base_width: int
  cifar_stem: bool
  pytorch_padding: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype)
    block_cls = BasicBlock if self.block == "basic" else BottleneckBlock
    padding = [(1, 1), (1, 1)] if self.pytorch_padding else "SAME"
    x = x.astype(self.dtype)
    if self.cifar_stem:
      x = conv(self.base_width, (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      x = conv(self.base_width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)  # pads with -inf
    for stage, num_blocks in enumerate(self.stage_sizes):
      for b in range(num_blocks):
        strides = 2 if stage > 0 and b == 0 else 1
        x = block_cls(self.base_width * 2**stage, strides, conv, norm, padding,
                      name=f"stage{stage + 1}_block{b + 1}")(x)
    return x


class TinyCNN(nn.Module):
  """Two conv layers; for tests and smoke runs. K = 2 * width."""
  width: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no batch statistics
    x = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype, name="conv1")(x.astype(self.dtype)))
    return nn.relu(nn.Conv(2 * self.width, (3, 3), dtype=self.dtype, name="conv2")(x))


class Classifier(nn.Module):
  """backbone [-> neck] -> GAP -> linear head, plus the method's own module (`gate`).

    logits = W . GAP(A) + b     (the network's prediction; the only path used at test time)

  A is the backbone's last activation map, or the method's `neck` applied to it (PICNN's extra
  conv). Called with labels in training, `gate` (CSG's gated path, PICNN's Θ and masks; its
  variables in the `gates` collection) adds its outputs, e.g. logits_csg. Outputs also include
  the pooled `features` [B, K] and the `feature_map` [B, H, W, K] for evaluation; under jit,
  outputs a caller ignores cost nothing.
  """
  backbone: nn.Module
  num_classes: int
  num_filters: int
  gate: nn.Module | None = None
  neck: nn.Module | None = None

  @nn.compact
  def __call__(self, images, labels: jnp.ndarray | None = None, *, train: bool = False):
    chex.assert_rank(images, 4)
    feature_map = self.backbone(images, train=train)
    if self.neck is not None:
      feature_map = self.neck(feature_map)
    chex.assert_rank(feature_map, 4)
    chex.assert_axis_dimension(feature_map, -1, self.num_filters)
    # Pool and classify in float32 whatever the trunk's dtype: the logits feed the losses.
    features = feature_map.astype(jnp.float32).mean(axis=(1, 2))
    head = nn.Dense(self.num_classes, name="head")
    out = {"feature_map": feature_map, "features": features, "logits": head(features)}
    if self.gate is not None:
      out.update(self.gate(features, labels, head=head, logits=out["logits"]))
    return out


MODEL_NAMES = ("tiny", "resnet{6n+2} (CIFAR: resnet8, resnet20, resnet32, resnet56, ...)",
               "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def build_backbone(name: str, *, width: int = 0, dtype: Any = jnp.float32,
                   pytorch_padding: bool = True):
  """Returns (backbone module, K). `width` 0 keeps the architecture's standard width.

  `pytorch_padding` applies to the ImageNet-style ResNets only (see ResNet); the CIFAR family
  keeps "SAME", the layout its documented results were trained with.
  """
  match = _RESNET.match(name)
  depth = int(match.group(1)) if match else 0
  if name == "tiny":
    w = width or 8
    return TinyCNN(width=w, dtype=dtype), 2 * w
  if depth in IMAGENET_RESNETS:
    block, stages = IMAGENET_RESNETS[depth]
    w = width or 64
    k = w * 2**(len(stages) - 1) * (4 if block == "bottleneck" else 1)
    return ResNet(stages, block, w, cifar_stem=False, dtype=dtype,
                  pytorch_padding=pytorch_padding), k
  if depth >= 8 and (depth - 2) % 6 == 0:  # CIFAR family: 6n + 2 layers
    n = (depth - 2) // 6
    w = width or 16
    return ResNet((n, n, n), "basic", w, cifar_stem=True, pytorch_padding=False,
                  dtype=dtype), 4 * w
  raise CSGError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)} "
                 "(set --config.model.name)")


def build_model(model_config, num_classes: int, method=None) -> Classifier:
  """The classifier of `model_config` for `num_classes`, with what `method` (a methods.Method)
  adds: its neck and its own module; None builds the plain network."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
  if model_config.dtype not in dtypes:
    raise CSGError(f"unknown model.dtype {model_config.dtype!r}; use one of {sorted(dtypes)}")
  dtype = dtypes[model_config.dtype]
  backbone, k = build_backbone(model_config.name, width=model_config.width, dtype=dtype,
                               pytorch_padding=model_config.pytorch_padding)
  neck, neck_filters = method.neck(dtype) if method is not None else (None, None)
  k = neck_filters or k
  gate = method.gate_module(num_classes, k) if method is not None else None
  return Classifier(backbone, num_classes, k, gate=gate, neck=neck)
