"""An independent count of a torchvision-style ResNet's multiply-adds, to check XLA's FLOPs.

Counts convolutions and the dense head layer by layer from the architecture (no csg_jax code), and
the FLOPs of a train step whose lowest layers are frozen: 2 x (the forward multiply-adds, plus for
every trained layer its weight gradient, plus the input gradient of every layer above the lowest
trained one). Batch norm, ReLU, pooling and the optimiser's elementwise work are left out: they
add a few per cent that XLA counts too.

  python benchmarks/resnet_flops.py --depth 152 --size 128 --classes 6 --frozen stem,stage1,stage2
  python benchmarks/resnet_flops.py --depth 50 --size 224 --classes 1000
"""

import argparse
import json

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
          152: (3, 8, 36, 3)}


def layers(depth: int, size: int, classes: int) -> list[tuple[str, float]]:
  """[(group, multiply-adds per image)] of every conv and the head, bottom up; group is
  "stem", "stage1".."stage4" or "head"."""
  out = []
  side = (size + 1) // 2  # 7x7 stride-2 stem
  out.append(("stem", side * side * 7 * 7 * 3 * 64))
  side = (side + 1) // 2  # 3x3 stride-2 max pool
  channels = 64
  bottleneck = depth >= 50
  for stage, blocks in enumerate(BLOCKS[depth]):
    width = 64 * 2 ** stage
    expanded = width * 4 if bottleneck else width
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      out_side = (side + stride - 1) // stride
      group = f"stage{stage + 1}"
      if bottleneck:
        out.append((group, side * side * channels * width))  # 1x1
        out.append((group, out_side * out_side * 9 * width * width))  # 3x3, strided
        out.append((group, out_side * out_side * width * expanded))  # 1x1
      else:
        out.append((group, out_side * out_side * 9 * channels * width))
        out.append((group, out_side * out_side * 9 * width * width))
      if stride != 1 or channels != expanded:
        out.append((group, out_side * out_side * channels * expanded))  # projection shortcut
      channels, side = expanded, out_side
  out.append(("head", channels * classes))
  return out


def train_flops(per_layer: list[tuple[str, float]], frozen: set[str]) -> float:
  """FLOPs per image of a train step with the groups in `frozen` left unchanged."""
  forward = sum(m for _, m in per_layer)
  trained = [m for g, m in per_layer if g not in frozen]
  first = next(i for i, (g, _) in enumerate(per_layer) if g not in frozen)
  input_grads = sum(m for _, m in per_layer[first + 1:])
  return 2 * (forward + sum(trained) + input_grads)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depth", type=int, default=152, choices=sorted(BLOCKS))
  parser.add_argument("--size", type=int, default=128, help="image side, px")
  parser.add_argument("--classes", type=int, default=6)
  parser.add_argument("--frozen", default="", help="comma-separated groups: stem,stage1,...")
  parser.add_argument("--images", type=int, default=1, help="images per chip")
  args = parser.parse_args()
  per_layer = layers(args.depth, args.size, args.classes)
  frozen = set(filter(None, args.frozen.split(",")))
  forward = 2 * sum(m for _, m in per_layer)
  print(json.dumps({
      "forward_gflop_per_image": round(forward / 1e9, 3),
      "train_gflop_per_image": round(train_flops(per_layer, frozen) / 1e9, 3),
      "train_gflop": round(args.images * train_flops(per_layer, frozen) / 1e9, 3),
      "eval_gflop": round(args.images * forward / 1e9, 3),
      "frozen": sorted(frozen), "images": args.images,
  }))


if __name__ == "__main__":
  main()
