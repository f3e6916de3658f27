"""csg-compile: a run's steps compiled for a TPU slice from this host (libtpu, no TPU): the
report's fields, FLOPs against a count of the model's multiply-adds, the batch that does not fit,
--max_batch, a multi-host slice. Skipped where libtpu is not installed (it is the `tpu` extra)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip install '
                                  '"csg_jax[tpu]"): nothing to compile for TPU with')

# The digits default (8x8x1 images, 10 classes, CSG joint) with the two-layer model at width 4.
TINY = ("--config.model.name=tiny", "--config.model.width=4", "--config.batch_size=128",
        "--config.eval_batch_size=128")


def _compile(*args, cwd=None):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch", "compile.py"), *args],
                        capture_output=True, text=True, cwd=cwd or REPO, timeout=600)


def _tiny_flops(batch: int, train: bool) -> float:
  """FLOPs of the tiny model (width 4) on `batch` 8x8x1 images, from its layers' multiply-adds:
  conv1 3x3 1->4, conv2 3x3 4->8 ("SAME", stride 1), the head 8->10 once per path (STD, CSG)."""
  conv1, conv2 = 8 * 8 * 9 * 1 * 4, 8 * 8 * 9 * 4 * 8
  if not train:
    return batch * 2 * (conv1 + conv2 + 8 * 10)
  head = 2 * 8 * 10
  forward = conv1 + conv2 + head
  # Backward: every weight gradient, and the input gradient of every layer but the first.
  return batch * 2 * (forward + forward + conv2 + head)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
  out = tmp_path_factory.mktemp("compile")
  proc = _compile("--topology=v5e:2x2", f"--out={out}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, json.loads((out / "compile.json").read_text())


@needs_libtpu
def test_report_fields_and_table(tiny_report):
  proc, report = tiny_report
  assert {k: report[k] for k in ("topology", "chip", "chips", "hosts", "chip_memory_gib")} == {
      "topology": "v5e:2x2", "chip": "v5e", "chips": 4, "hosts": 1, "chip_memory_gib": 16}
  assert set(report["steps"]) == {"train_joint", "eval"}
  for name, step in report["steps"].items():
    assert set(step["memory_gib"]) >= {"arguments", "outputs", "temporaries", "total"}
    assert 0 < step["memory_gib"]["total"] < report["chip_memory_gib"]
    assert step["fits"] is True
    assert step["tflops_per_chip"] > 0 and step["roofline_ms"] > 0 and step["images_per_s"] > 0
    assert step["invariants"] == [], step["invariants"]
    assert name in proc.stdout
  train = report["steps"]["train_joint"]
  # Data parallelism: the gradients are all-reduced, nothing is gathered.
  assert train["collectives"]["all-reduce"]["count"] > 0
  assert train["collective_bytes_per_chip"] > 0
  assert "all-gather" not in train["collectives"]


@needs_libtpu
def test_train_flops_match_a_count_of_the_layers(tiny_report):
  _, report = tiny_report
  counted = _tiny_flops(128 // report["chips"], train=True)
  xla = report["steps"]["train_joint"]["tflops_per_chip"] * 1e12
  assert abs(xla - counted) <= 0.1 * counted, (xla, counted)


@needs_libtpu
def test_eval_flops_lie_between_the_counts_with_and_without_the_first_layer(tiny_report):
  # In the inference program XLA fuses the first (one-channel) convolution into its producer and
  # its cost model leaves most of that convolution out: measured 10 % under the full count here.
  _, report = tiny_report
  batch = 128 // report["chips"]
  full = _tiny_flops(batch, train=False)
  without_conv1 = full - batch * 2 * 8 * 8 * 9 * 1 * 4
  xla = report["steps"]["eval"]["tflops_per_chip"] * 1e12
  assert 0.98 * without_conv1 <= xla <= 1.02 * full, (xla, without_conv1, full)


@needs_libtpu
def test_a_batch_too_large_fails_with_one_line_and_writes_only_the_report(tmp_path):
  out = tmp_path / "out"
  proc = _compile("--topology=v5e:2x2", f"--out={out}", "--config.model.name=tiny",
                  "--config.model.width=4", "--config.data.image_size=256",
                  "--config.batch_size=65536", "--config.eval_batch_size=64")
  assert proc.returncode == 2
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: train_joint"), proc.stderr[-3000:]
  assert "does not fit in 16 GiB per chip of v5e:2x2" in lines[0]
  assert os.listdir(out) == ["compile.json"]
  report = json.loads((out / "compile.json").read_text())
  assert report["steps"]["train_joint"]["fits"] is False
  assert report["steps"]["eval"]["fits"] is True


@needs_libtpu
@pytest.mark.slow
def test_max_batch_fits_and_the_next_multiple_does_not(tmp_path):
  budget = 0.002  # GiB per chip: about 128 images of the tiny model, 4 compiles to find
  proc = _compile("--topology=v5e:2x2", f"--out={tmp_path}", f"--hbm_gib={budget}", "--max_batch",
                  *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  best = json.loads((tmp_path / "compile.json").read_text())["max_global_batch"]
  assert best > 0 and best % 4 == 0
  fits = _compile("--topology=v5e:2x2", f"--hbm_gib={budget}", *TINY[:2],
                  f"--config.batch_size={best}", "--config.eval_batch_size=4")
  assert fits.returncode == 0, fits.stderr[-3000:]
  too_big = _compile("--topology=v5e:2x2", f"--hbm_gib={budget}", *TINY[:2],
                     f"--config.batch_size={best + 4}", "--config.eval_batch_size=4")
  assert too_big.returncode == 2 and "train_joint at the config's batch" in too_big.stderr


@needs_libtpu
@pytest.mark.slow
def test_a_two_host_slice_compiles_each_host_s_program(tmp_path):
  proc = _compile("--topology=v5e:2x4", f"--out={tmp_path}", *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((tmp_path / "compile.json").read_text())
  assert (report["chips"], report["hosts"]) == (8, 2)
  train = report["steps"]["train_joint"]
  assert (train["per_host_batch"], train["per_device_batch"]) == (64, 16)
  assert train["invariants"] == []


@needs_libtpu
def test_an_unknown_topology_is_one_line_naming_the_known_ones():
  proc = _compile("--topology=v9:2x2", *TINY)
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and "v5e:2x2" in proc.stderr, proc.stderr


def test_without_libtpu_one_line_says_how_to_get_it(monkeypatch):
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
  from csg_jax.training import aot  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(platforms, "has_libtpu", lambda: False)
  with pytest.raises(CSGError) as e:
    aot.topology("v5e:2x2")
  assert str(e.value) == 'compiling for TPU needs libtpu: pip install "csg_jax[tpu]"'


def test_a_libtpu_known_to_crash_for_a_chip_is_refused_in_one_line(monkeypatch):
  from csg_jax import platforms  # pylint: disable=g-import-not-at-top
  from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
  from csg_jax.training import aot  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(platforms, "has_libtpu", lambda: True)
  monkeypatch.setattr(platforms, "libtpu_version", lambda: "0.0.42.1")
  with pytest.raises(CSGError, match=r"^libtpu 0.0.42.1 crashes compiling for v6e .* install "
                     r"libtpu 0.0.43.2 or later"):
    aot.topology("v6e:2x2")
  assert aot._release("0.0.43.2") >= aot.CHIPS["v6e"].min_libtpu
  assert aot._release("0.0.46.dev20250601") >= aot.CHIPS["v6e"].min_libtpu


def _platform_probe(env):
  code = ("import jax; from csg_jax import platforms; "
          "print(platforms.skip_absent_tpu(), jax.devices()[0].platform)")
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                        timeout=120, env=env, check=False)


@needs_libtpu
def test_libtpu_on_a_host_without_tpu_leaves_commands_on_the_cpu_and_stderr_quiet():
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  proc = _platform_probe(env)
  assert (proc.returncode, proc.stdout.split(), proc.stderr) == (0, ["True", "cpu"], "")
  # A command's error stays its one line although libtpu is installed.
  proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "train.py"),
                         "--config.batch_size=-1", "--workdir=unused"], capture_output=True,
                        text=True, cwd=REPO, timeout=120, env=env, check=False)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith("error: config.batch_size is -1")


def test_an_explicit_jax_platforms_is_left_alone():
  proc = _platform_probe({**os.environ, "JAX_PLATFORMS": "cpu"})
  assert (proc.returncode, proc.stdout.split()) == (0, ["False", "cpu"]), proc.stderr




def _LINEAR(n):  # pylint: disable=invalid-name
  return 0.5 + 0.01 * n


@pytest.mark.parametrize("memory", [
    _LINEAR,  # the line through two probes finds the answer
    lambda n: 0.5 + 0.0001 * n ** 1.5,  # convex
    lambda n: 0.5 + 0.3 * n ** 0.5,  # concave
    lambda n: 0.5 + 0.02 * (n // 8) * 8,  # steps (buffers rounded up)
    lambda n: 0.5 + 1e-5 * n + (2.0 if n > 26240 else 0.0),  # flat, then a wall
    lambda n: 3.0 + 0.01 * n,  # nothing fits
    lambda n: 0.5 + 1e-6 * n,  # everything up to the limit fits
], ids=["linear", "convex", "concave", "steps", "wall", "none", "all"])
@pytest.mark.parametrize("start", [1, 2, 64, 5000])
def test_max_batch_search_finds_the_largest_fitting_multiple(monkeypatch, memory, start):
  """The search against a pretended per-device memory curve (GiB at n images per device) and a
  2 GiB device: the largest fitting multiple of the 4 devices, each batch probed once, in few
  probes (4-6 when memory is linear in the batch)."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  from csg_jax.training import aot  # pylint: disable=g-import-not-at-top
  probed = []

  def peak(tgt, batch):
    probed.append(batch)
    need = memory(batch // 4)
    return need <= 2.0, need * aot.GIB

  monkeypatch.setattr(aot, "train_steps_peak", peak)
  tgt = SimpleNamespace(devices=[0, 1, 2, 3], device_memory_gib=2.0,
                        setup=SimpleNamespace(config=SimpleNamespace(batch_size=4 * start)))
  limit = 4 * 20_000
  best = aot.max_global_batch(tgt, limit=limit)
  expect = 4 * max(n for n in range(limit // 4 + 1) if n == 0 or memory(n) <= 2.0)
  assert best == expect
  # Doubling, then bisection to one multiple, would take 2 log2(answer) probes: up to 30 here.
  assert len(probed) == len(set(probed)) <= 20, probed
  if memory(1) <= 2.0 and best < limit:
    assert best in probed and best + 4 in probed  # it saw the answer fit and the next fail
  if memory is _LINEAR:
    assert len(probed) <= 6, probed


def test_invariants_count_each_gradient_reduced_once_and_flag_a_second_reduction():
  """On the 8 CPU devices: a CSG step all-reduces 4 bytes per trained parameter and per
  batch-norm sum (two per channel forward, two backward), within 2 %; twice that is flagged."""
  import jax  # pylint: disable=g-import-not-at-top
  from conftest import small_config  # pylint: disable=g-import-not-at-top
  from csg_jax import runs, sharding  # pylint: disable=g-import-not-at-top
  from csg_jax.training import aot  # pylint: disable=g-import-not-at-top
  setup = runs.for_shapes(small_config(), num_classes=10, image_shape=(8, 8, 1),
                          num_train_examples=1000, devices=jax.devices())
  tgt = aot.Target("cpu", aot.CHIPS["v5e"], jax.devices(), setup, 10)
  state = setup.abstract_state()
  fn, _ = tgt.steps()["train_joint"]
  compiled = fn.lower(state, sharding.abstract_batch(setup.mesh, 64, (8, 8, 1))).compile()
  colls = aot.collectives(compiled.as_text())
  trained, statistics = aot.reduced_elements(tgt, "joint", state)
  params = sum(x.size for x in jax.tree_util.tree_leaves((state.params, state.gates)))
  assert trained == params  # nothing frozen in this config
  assert statistics == sum(x.size for x in jax.tree_util.tree_leaves(state.batch_stats))
  expect = 4 * (trained + 2 * statistics)
  assert abs(colls["all-reduce"]["bytes"] - expect) <= 0.02 * expect, (colls, expect)
  assert aot.check_invariants(tgt, compiled, colls, False, (trained, statistics)) == []
  twice = {"all-reduce": {"count": 2 * colls["all-reduce"]["count"],
                          "bytes": 2 * colls["all-reduce"]["bytes"]}}
  problems = aot.check_invariants(tgt, compiled, twice, False, (trained, statistics))
  assert len(problems) == 1 and "reduced more than once" in problems[0], problems
