r"""What a train step of each method costs, on the same model, batch and machine.

For each method (std, csg joint, picnn): the compiled train step of csg_jax's trainer
(`training.compile_train_steps` on `runs.for_shapes`, no data needed), XLA's FLOPs per step from
its cost analysis (no load disturbs it), and the step's time: rounds of one step per method, the
order rotating, median over rounds of wall time and of this process's CPU time. Ratios are
against STD in the same rounds. The load average is printed before and after; rerun when it is
above about 0.5.

  python benchmarks/method_step_cost.py                      # resnet20, 32x32, batch 128
  python benchmarks/method_step_cost.py --model resnet8 --rounds 30
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runs from a checkout without `pip install -e .` too


def main(argv=None) -> int:
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  platforms.skip_absent_tpu()  # libtpu installed on a host without a TPU: the CPU, quietly
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet20")
  parser.add_argument("--image", type=int, default=32, help="image side (3 channels)")
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--methods", default="std,csg,picnn")
  args = parser.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from csg_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from csg_jax import runs  # pylint: disable=g-import-not-at-top
  from csg_jax import sharding  # pylint: disable=g-import-not-at-top
  from csg_jax.training import loop  # pylint: disable=g-import-not-at-top

  print(f"load average before: {os.getloadavg()}", flush=True)
  names = args.methods.split(",")
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.normal(size=(args.batch, args.image, args.image, 3)).astype(
      np.float32), "label": rng.integers(0, args.classes, args.batch).astype(np.int32)}
  steps, states, flops = {}, {}, {}
  for name in names:
    config = config_lib.base_config("digits")
    config.update(method=name, batch_size=args.batch)
    config.model.name = args.model
    setup = runs.for_shapes(config, num_classes=args.classes,
                            image_shape=(args.image, args.image, 3), num_train_examples=50_000,
                            devices=jax.devices()[:1])
    state = jax.jit(lambda r, s=setup: runs.create_train_state(
        s.model, s.optimizers, s.image_shape, r))(setup.rng)
    [(phase, compiled)] = loop.compile_train_steps(setup, state).items()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops[name] = float(cost.get("flops", 0.0))
    steps[name], states[name] = compiled, state
    batch = sharding.to_global(host_batch, setup.mesh)
    for _ in range(2):  # warm-up
      states[name], m = steps[name](states[name], batch)
      jax.block_until_ready(m)
  wall = {n: [] for n in names}
  cpu = {n: [] for n in names}
  for r in range(args.rounds):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      w0, c0 = time.perf_counter(), time.process_time()
      states[name], m = steps[name](states[name], batch)
      jax.block_until_ready(m)
      wall[name].append(time.perf_counter() - w0)
      cpu[name].append(time.process_time() - c0)
  base = names[0]
  out = {}
  for name in names:
    out[name] = {
        "gflops_per_step": flops[name] / 1e9,
        "flops_over_" + base: flops[name] / flops[base],
        "wall_ms": 1e3 * statistics.median(wall[name]),
        "cpu_ms": 1e3 * statistics.median(cpu[name]),
        "wall_over_" + base: statistics.median(a / b for a, b in zip(wall[name], wall[base])),
        "cpu_over_" + base: statistics.median(a / b for a, b in zip(cpu[name], cpu[base])),
    }
    print(f"{name:6s} {out[name]['gflops_per_step']:8.2f} GFLOP/step "
          f"(x{out[name]['flops_over_' + base]:.3f}) | wall {out[name]['wall_ms']:7.1f} ms "
          f"(x{out[name]['wall_over_' + base]:.3f}) | CPU {out[name]['cpu_ms']:7.1f} ms "
          f"(x{out[name]['cpu_over_' + base]:.3f})", flush=True)
  print(f"load average after: {os.getloadavg()}")
  print(json.dumps({"model": args.model, "image": args.image, "batch": args.batch,
                    "device": jax.devices()[0].device_kind, "methods": out}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
