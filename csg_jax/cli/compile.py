r"""Compiles a run's steps for a TPU slice from any host (no TPU needed; libtpu is): memory per
chip and whether it fits, FLOPs, collectives and a roofline step time per step, in a table and
in <out>/compile.json.

  csg-compile --config cifar10_resnet20 --topology v5e:2x2
  csg-compile --config voc_part_resnet152 --topology v5e:2x2 --config.model.dtype=bfloat16
  csg-compile --config cifar10_resnet20 --topology v5e:2x2 --max_batch --out compile/c10

Needs libtpu: pip install "csg_jax[tpu]". Topologies: <chip>:<shape>, chip v4, v5e, v5p or v6e
(e.g. v5e:2x2, v5e:4x4, v4:2x2x2). See docs/accelerators.md.

From a checkout without `pip install -e .`: python launch/compile.py ...
"""

import os

from absl import flags

from csg_jax import cli

_CONFIG = cli.define_config_flag()
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice to compile for, <chip>:<shape>: "
                                "v5e:2x2, v5e:4x4, v4:2x2x1, v4:2x2x2, v5p:2x2x1, v6e:2x2, ...")
_OUT = flags.DEFINE_string("out", None, "Folder for compile.json (created); default: none "
                           "written, the table only.")
_HBM_GIB = flags.DEFINE_float("hbm_gib", None, "Memory per chip a step must fit in, GiB (default: "
                               "the chip's HBM; less keeps headroom).")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False, "Also find the largest global batch (a "
                               "multiple of the chip count) at which every train step fits.")


def main(argv):
  config = cli.start(argv, _CONFIG)
  # The host's own backend is not needed: compile-only TPU devices come from libtpu.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  with cli.user_errors():
    import jax  # pylint: disable=g-import-not-at-top
    # A compile-only TPU client cannot load an executable from JAX's persistent compilation cache
    # (jax 0.10.2: "PjRtCompiler must be constructed with a Client"): each hit would only warn
    # and compile again, so the cache is off here.
    jax.config.update("jax_enable_compilation_cache", False)
    from csg_jax import fileio  # pylint: disable=g-import-not-at-top
    from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
    from csg_jax.log import log  # pylint: disable=g-import-not-at-top
    from csg_jax.training import aot  # pylint: disable=g-import-not-at-top
    if not _TOPOLOGY.value:
      raise CSGError("--topology is required, e.g. --topology v5e:2x2")
    tgt = aot.target(config, _TOPOLOGY.value, memory_gib=_HBM_GIB.value)
    steps = aot.compile_all(tgt)
    max_batch = aot.max_global_batch(tgt) if _MAX_BATCH.value else None
    report = aot.summary(tgt, steps, max_batch)
    print(aot.table(report), flush=True)
    for name, step in steps.items():
      for problem in step.get("invariants", ()):
        log(f"warning: {name}: {problem}")
    if max_batch is not None:
      log(f"largest global batch at which every train step fits: {max_batch} "
          f"({max_batch // tgt.hosts} per host)")
    if _OUT.value:
      fileio.makedirs(_OUT.value)
      path = fileio.join(_OUT.value, "compile.json")
      fileio.write_json_atomic(path, report)
      log(f"wrote {path}")
    too_big = [n for n, s in steps.items() if not s["fits"]]
    if too_big:
      raise CSGError(
          f"{' and '.join(too_big)} at the config's batch does not fit in "
          f"{tgt.device_memory_gib:g} GiB per {'chip' if tgt.per_chip == 1 else 'device'} of "
          f"{tgt.name}{_needs(steps[too_big[0]])}: lower --config.batch_size or "
          "--config.eval_batch_size, find the largest that fits with --max_batch, or use a "
          "larger slice")


def _needs(step) -> str:
  if "memory_gib" in step:
    return f" (needs {step['memory_gib']['total']:.2f} GiB)"
  if "required_gib" in step:  # XLA refused to compile: its temporaries alone
    return f" (needs more than {step['required_gib']:.2f} GiB)"
  return ""

def run():
  cli.run(main)


if __name__ == "__main__":
  run()
