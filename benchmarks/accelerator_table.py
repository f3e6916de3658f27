"""The "Accelerator plan" tables of benchmarks/RESULTS.md from accelerator_plan.sh's compile.json
files: one markdown row per case and train step (eval steps with --eval). Figures are per device:
per chip, or per TensorCore where a slice lists each core as a device (v4, marked ‡).

  python benchmarks/accelerator_table.py [OUT] [--cases r152_v5e16_bf16,r152_v4_bf16] [--eval]
"""

import argparse
import glob
import json
import os

_SLICE = {"v4:2x2x1": "v4 2×2×1", "v5e:2x2": "v5e 2×2", "v5e:4x4": "v5e 4×4",
          "v5e:16x16": "v5e 16×16", "v6e:2x2": "v6e 2×2"}


def _number(x: float, digits: int = 0) -> str:
  return f"{x:,.{digits}f}".replace(",", " ")


def rows(report: dict, with_eval: bool) -> list[str]:
  out = []
  topology = _SLICE.get(report["topology"], report["topology"])
  if report["devices"] != report["chips"]:  # v4: a device per TensorCore, figures per device
    topology += " ‡"
  dtype = {"float32": "f32", "bfloat16": "bf16"}.get(report["config"]["dtype"],
                                                     report["config"]["dtype"])
  largest = report.get("max_global_batch")
  run = f"{report['config']['model']} {report['config']['method'].upper()}"
  for name, step in report["steps"].items():
    if name == "eval" and not with_eval:
      continue
    if "memory_gib" not in step:
      out.append(f"| {run} | {topology} ({report['chips']}, {report['hosts']}) | {dtype} | "
                 f"{name} | {step['global_batch']} | does not fit | | | | | | |")
      continue
    out.append(" | ".join([
        f"| {run}", f"{topology} ({report['chips']}, {report['hosts']})", dtype, name,
        f"{_number(step['global_batch'])} ({_number(step['per_host_batch'])})",
        f"{step['memory_gib']['total']:.3f}",
        _number(largest) if largest and name != "eval" else "",
        f"{step['tflops_per_chip'] * 1e3:.1f}",
        f"{step['collective_bytes_per_chip'] / 2**20:.1f}",
        f"{step['roofline_ms']:.2f}",
        _number(step["images_per_s"]),
        _number(step["images_per_s_per_host"]) + " |"]))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out", nargs="?", default="workdirs/accelerator_plan")
  parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
  parser.add_argument("--eval", action="store_true", help="eval steps too")
  args = parser.parse_args()
  names = args.cases.split(",") if args.cases else sorted(
      os.path.basename(os.path.dirname(p)) for p in glob.glob(f"{args.out}/*/compile.json"))
  print("| model, method | slice (chips, hosts) | dtype | step | global batch (per host) | GiB/chip | largest "
        "global batch | GFLOP/step/chip | collectives MiB/chip | roofline ms | img/s slice | "
        "img/s per host |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for name in names:
    path = os.path.join(args.out, name, "compile.json")
    if not os.path.exists(path):
      print(f"| {name}: not compiled | | | | | | | | | | | |")
      continue
    with open(path, encoding="utf-8") as f:
      print("\n".join(rows(json.load(f), args.eval)))


if __name__ == "__main__":
  main()
