"""A PyTorch re-statement of the released CSG training step, for speed comparisons only.

Written by us from docs/csg-method.md (§2-4), in plain torch.nn, with the same architectures as
`csg_jax.models` (CIFAR ResNet-6n+2 with 1x1 projection shortcuts; torchvision-style ImageNet
ResNets with the stride on the 3x3 conv), so parameter counts match. The CSG step is the
released one: the gate row G[y[i]] is applied to the last conv map by a Python loop over the
batch, then GAP, fc, CE on the gated logits plus the L1 hinge, an SGD step, and the projection
of G (column max -> 1, then clip to [0, 1]).

torch is a benchmark-only dependency (the `bench` extra); csg_jax never imports this file.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
  conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
  # The fan-out He init csg_jax uses; irrelevant to speed, kept for like-for-like nets.
  nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
  return conv


def _bn(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
  bn = nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)  # torch momentum 0.1 = flax 0.9
  if zero_init:
    nn.init.zeros_(bn.weight)  # each block starts as the identity, as in csg_jax
  return bn


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
  """A 1x1 conv + BN projection where the block changes shape; the identity otherwise."""
  if stride != 1 or cin != cout:
    return nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout))
  return nn.Identity()


class BasicBlock(nn.Module):
  """Two 3x3 convs; a 1x1 conv + BN shortcut when the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, cout, 3, stride), _bn(cout)
    self.conv2, self.bn2 = _conv(cout, cout, 3), _bn(cout, zero_init=True)
    self.shortcut = _shortcut(cin, cout, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(self.shortcut(x) + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4 channels), torchvision's ResNet-50 block."""

  def __init__(self, cin: int, width: int, stride: int):
    super().__init__()
    cout = 4 * width
    self.conv1, self.bn1 = _conv(cin, width, 1), _bn(width)
    self.conv2, self.bn2 = _conv(width, width, 3, stride), _bn(width)
    self.conv3, self.bn3 = _conv(width, cout, 1), _bn(cout, zero_init=True)
    self.shortcut = _shortcut(cin, cout, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(self.shortcut(x) + y)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32 inputs: 3x3 stem, stages of 16/32/64 filters. K = 64."""

  def __init__(self, depth: int = 20):
    super().__init__()
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    layers, cin = [_conv(3, 16, 3), _bn(16), nn.ReLU()], 16
    for stage, width in enumerate((16, 32, 64)):
      for b in range(n):
        layers.append(BasicBlock(cin, width, 2 if stage > 0 and b == 0 else 1))
        cin = width
    self.body = nn.Sequential(*layers)
    self.num_filters = 64

  def forward(self, x):
    return self.body(x)


class ImageNetResNet(nn.Module):
  """torchvision-style bottleneck ResNet trunk (7x7/2 stem, 3x3/2 max-pool). K = 2048."""

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3)):
    super().__init__()
    layers = [nn.Conv2d(3, 64, 7, 2, padding=3, bias=False), _bn(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, padding=1)]
    nn.init.kaiming_normal_(layers[0].weight, mode="fan_out", nonlinearity="relu")
    cin = 64
    for stage, blocks in enumerate(stage_sizes):
      for b in range(blocks):
        width = 64 * 2**stage
        layers.append(Bottleneck(cin, width, 2 if stage > 0 and b == 0 else 1))
        cin = 4 * width
    self.body = nn.Sequential(*layers)
    self.num_filters = cin

  def forward(self, x):
    return self.body(x)


def build_trunk(name: str) -> nn.Module:
  if name == "resnet50":
    return ImageNetResNet((3, 4, 6, 3))
  if name.startswith("resnet"):
    return CifarResNet(int(name[len("resnet"):]))
  raise ValueError(f"unknown model {name!r}: use resnet50 or a CIFAR resnet{{6n+2}}")


class CSGNet(nn.Module):
  """trunk -> (gate, released per-sample loop) -> GAP -> fc."""

  def __init__(self, trunk: nn.Module, num_classes: int, gate_init: float = 0.5):
    super().__init__()
    self.trunk = trunk
    k = trunk.num_filters
    self.fc = nn.Linear(k, num_classes)
    self.G = nn.Parameter(torch.full((num_classes, k), gate_init))

  def forward(self, x, y=None):
    a = self.trunk(x)  # [B, K, H, W], after ReLU
    if y is not None:
      # The released loop, written into a fresh map: writing into `a` itself fails autograd's
      # version check (the ReLU and each product saved `a` for backward).
      gated = torch.empty_like(a)
      for i in range(a.shape[0]):
        gated[i] = a[i] * self.G[y[i]].view(-1, 1, 1)
      a = gated
    return self.fc(a.mean(dim=(2, 3)))


def num_params(model: CSGNet) -> int:
  """Trainable weights without G (csg_jax keeps G in its own `gates` collection)."""
  return sum(p.numel() for name, p in model.named_parameters() if name != "G")


def make_optimizers(model: CSGNet, lr: float = 0.1, momentum: float = 0.9,
                    weight_decay: float = 5e-4, gate_lr: float = 0.1):
  """SGD with momentum; weight decay on conv/fc kernels only (as csg_jax); G on its own SGD."""
  decay = [p for n, p in model.named_parameters() if n != "G" and p.ndim > 1]
  no_decay = [p for n, p in model.named_parameters() if n != "G" and p.ndim <= 1]
  trunk = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum)
  gate = torch.optim.SGD([model.G], lr=gate_lr, momentum=momentum)
  return trunk, gate


@torch.no_grad()
def project_gate(g: torch.Tensor) -> None:
  """Released projection: each filter's column divided by its max over classes, clip to [0, 1]."""
  col_max = g.max(dim=0, keepdim=True).values
  g.div_(torch.where(col_max > 0, col_max, torch.ones_like(col_max))).clamp_(0.0, 1.0)


def std_step(model: CSGNet, trunk_opt, images, labels) -> torch.Tensor:
  """One standard training step: CE on the ungated logits."""
  trunk_opt.zero_grad(set_to_none=True)
  loss = F.cross_entropy(model(images), labels)
  loss.backward()
  trunk_opt.step()
  return loss


def csg_step(model: CSGNet, trunk_opt, gate_opt, images, labels, *,
             sparsity_weight: float = 0.01, target_density: float = 0.1) -> torch.Tensor:
  """One released CSG step: CE(gated logits) + l2 * hinge(||G||_1), SGD, then project G."""
  trunk_opt.zero_grad(set_to_none=True)
  gate_opt.zero_grad(set_to_none=True)
  hinge = F.relu(model.G.abs().sum() - target_density * model.G.numel())
  loss = F.cross_entropy(model(images, labels), labels) + sparsity_weight * hinge
  loss.backward()
  trunk_opt.step()
  gate_opt.step()
  project_gate(model.G.data)
  return loss
