r"""One 3x3 convolution's forward pass, input gradient and weight gradient, timed in XLA (whatever
jax this Python imports) and, when torch is installed, in PyTorch (NCHW and channels-last), at
ResNet-20's first-stage shape by default: batch 128, 32x32, 16 -> 16 channels, stride 1.

The weight gradient is what separates jaxlib versions on CPU (benchmarks/RESULTS.md, "Where the
step's time goes"). To compare versions on one machine, install another jax beside the venv's and
put it first on the path (its import has to win):

  python benchmarks/conv_grad.py
  pip install --no-deps --target /tmp/jax083 jax==0.8.3 jaxlib==0.8.3
  PYTHONPATH=/tmp/jax083 python benchmarks/conv_grad.py --skip-torch

Medians of --repeats timed calls after one warm-up call; the load average is printed beside them.
The last line printed is a JSON object.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np


def _median_ms(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def time_jax(n, h, w, c, o, repeats):
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=(n, h, w, c)), "float32")
  dy = jax.numpy.asarray(rng.normal(size=(n, h, w, o)), "float32")
  k = jax.numpy.asarray(rng.normal(size=(3, 3, c, o)), "float32")
  conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fns = {
      "forward": jax.jit(lambda x, k, dy: conv(x, k)),
      "input gradient": jax.jit(lambda x, k, dy: jax.vjp(lambda x: conv(x, k), x)[1](dy)[0]),
      "weight gradient": jax.jit(lambda x, k, dy: jax.vjp(lambda k: conv(x, k), k)[1](dy)[0]),
  }
  name = f"jax {jax.__version__} (jaxlib {jaxlib.__version__})"
  return name, {op: _median_ms(lambda f=f: f(x, k, dy).block_until_ready(), repeats)
                for op, f in fns.items()}


def time_torch(n, h, w, c, o, repeats, threads):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  out = {}
  for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    dy = torch.randn(n, o, h, w).contiguous(memory_format=fmt)
    k = torch.randn(o, c, 3, 3).contiguous(memory_format=fmt)
    grad = lambda mask, x=x, dy=dy, k=k: torch.ops.aten.convolution_backward(
        dy, x, k, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, mask)
    out[f"torch {torch.__version__} {layout}"] = {
        "forward": _median_ms(lambda x=x, k=k: torch.nn.functional.conv2d(x, k, padding=1),
                              repeats),
        "input gradient": _median_ms(lambda: grad((True, False, False)), repeats),
        "weight gradient": _median_ms(lambda: grad((False, True, False)), repeats),
    }
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="128,32,32,16,16",
                      help="batch,height,width,in channels,out channels")
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--torch-threads", type=int, default=2)
  args = parser.parse_args(argv)
  n, h, w, c, o = (int(v) for v in args.shape.split(","))
  load = lambda: " ".join(f"{v:.2f}" for v in os.getloadavg())
  print(f"load average before: {load()}; shape N={n} H={h} W={w} C={c} O={o}, 3x3, stride 1")
  name, times = time_jax(n, h, w, c, o, args.repeats)
  results = {name: times}
  if not args.skip_torch:
    try:
      results.update(time_torch(n, h, w, c, o, args.repeats, args.torch_threads))
    except ImportError:
      print("torch is not installed: XLA only")
  print("| implementation | forward ms | input gradient ms | weight gradient ms |")
  print("|---|---|---|---|")
  for impl, t in results.items():
    print(f"| {impl} | {t['forward']:.1f} | {t['input gradient']:.1f} | "
          f"{t['weight gradient']:.1f} |")
  print(f"load average after: {load()}")
  print(json.dumps({impl: {op: round(ms, 2) for op, ms in t.items()}
                    for impl, t in results.items()}), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
