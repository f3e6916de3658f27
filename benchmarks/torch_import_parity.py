"""Logit parity of csg_jax.torch_import against live PyTorch, at every ResNet depth.

For each depth: a random-init torchvision-layout ResNet (tests/fixtures/make_torch_fixtures.py's,
randomised BN statistics and affine parameters, and the authors' gate), saved with torch.save as
the authors' checkpoints are ({"model_state_dict": ...} with `module.` prefixes), imported, and
run on two images at an even and an odd side. Prints the largest logit difference relative to
the logits' scale, and G against lmask.mask transposed; the JSON line holds them all.

  pip install -e ".[torch]"
  python benchmarks/torch_import_parity.py --width 64      # full width: a few minutes on 2 cores
"""

import argparse
import importlib.util
import json
import os
import tempfile

import jax
import numpy as np
import torch

from csg_jax import torch_import

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixtures():
  spec = importlib.util.spec_from_file_location(
      "make_torch_fixtures", os.path.join(REPO, "tests", "fixtures", "make_torch_fixtures.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--depths", default="18,34,50,101,152")
  parser.add_argument("--width", type=int, default=64, help="base width (64: torchvision's)")
  parser.add_argument("--sizes", default="64,65", help="input sides, one even and one odd")
  args = parser.parse_args()
  fixtures = _fixtures()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for depth in map(int, args.depths.split(",")):
      net = fixtures.resnet(depth, args.width, 6, seed=depth, gate=True)
      path = os.path.join(tmp, f"resnet{depth}.pt")
      torch.save({"epoch": 150, "model_state_dict": {f"module.{k}": v
                                                     for k, v in net.state_dict().items()}}, path)
      model, variables = torch_import.load_resnet(path, f"resnet{depth}")
      apply = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)["logits"])
      gate_equal = bool(np.array_equal(variables["gates"]["gate"]["G"],
                                       net.lmask.mask.detach().numpy().T))
      for size in map(int, args.sizes.split(",")):
        images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
          want = net(images).numpy()
        got = np.asarray(apply(variables, images.numpy().transpose(0, 2, 3, 1)))
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        results[f"resnet{depth}_{size}"] = rel
        print(f"resnet{depth} width {args.width} {size}x{size}: max |jax - torch| / max |torch| = "
              f"{rel:.2e}; G == lmask.mask.T: {gate_equal}", flush=True)
      results[f"resnet{depth}_gate_equal"] = gate_equal
  print(json.dumps({"width": args.width, **results}))


if __name__ == "__main__":
  main()
