"""PICNN (methods/picnn.py) against independent computations, and compare over three methods.

- The pathways for injected draws: forward values are the hard samples, gradients are those of
  the probabilities (checked by float64 finite differences of the function whose offsets are
  frozen at the point, which is what straight-through differentiates).
- The objective: CE over all samples + λ · CE over the samples whose draw matched, 0 with none.
- Θ's update: Adam on the gradient plus coupled weight decay, by hand.
- A small run trains, logs its diagnostics, assigns filters by softmax(Θ), and a crashed and
  resumed run ends bit-identical to the uninterrupted one.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import interrupt_batches_at, small_config
from csg_jax import config as config_lib
from csg_jax import data as data_lib
from csg_jax import methods
from csg_jax import models
from csg_jax import runs
from csg_jax import training
from csg_jax.errors import CSGError
from csg_jax.methods import picnn

B, C, K = 6, 4, 5


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def _draws(seed=0):
  rng = np.random.default_rng(seed)
  return dict(features=rng.normal(size=(B, K)), logits=rng.normal(size=(B, C)),
              labels=np.array([0, 1, 2, 3, 0, 1]), theta=rng.normal(size=(C, K)),
              kernel=rng.normal(size=(K, C)), bias=rng.normal(size=C),
              drawn=np.array([0, 2, 2, 1, 0, 3]), mask_noise=rng.uniform(size=(B, K)),
              complement_noise=rng.uniform(size=(B, K)), weights=rng.normal(size=(B, C)))


def _jax_pathways(d, theta, logits):
  head = lambda x: x @ jnp.asarray(d["kernel"], jnp.float32) + jnp.asarray(d["bias"], jnp.float32)
  return picnn.pathways(jnp.asarray(d["features"], jnp.float32), logits,
                        jnp.asarray(d["labels"]), theta, head, drawn=jnp.asarray(d["drawn"]),
                        mask_noise=jnp.asarray(d["mask_noise"], jnp.float32),
                        complement_noise=jnp.asarray(d["complement_noise"], jnp.float32))


def test_pathways_forward_values_are_the_samples():
  d = _draws()
  out = _jax_pathways(d, jnp.asarray(d["theta"], jnp.float32), jnp.asarray(d["logits"],
                                                                          jnp.float32))
  correlation = _softmax(d["theta"], axis=0)
  keep = d["mask_noise"] < correlation[d["drawn"]]  # q = onehot(drawn) @ softmax(Θ) forward
  assert 0 < keep.sum() < keep.size
  np.testing.assert_allclose(out["mask"], keep.astype(np.float64), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["mask"])[~keep], 0.0)  # p + (-p) is exactly 0
  masked = (d["features"] * keep) @ d["kernel"] + d["bias"]
  np.testing.assert_allclose(out["logits_masked"], masked, rtol=1e-5, atol=1e-5)
  complement = d["complement_noise"] >= correlation[d["labels"]]  # 1 - Bernoulli(Θ's row of y)
  np.testing.assert_allclose(out["logits_complement"],
                             (d["features"] * complement) @ d["kernel"] + d["bias"],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out["matched"], d["drawn"] == d["labels"])


def test_pathways_gradients_are_those_of_the_probabilities():
  """Straight-through: d/dΘ and d/dlogits of a loss on the masked logits equal the derivatives
  of the same loss with mask = q(Θ, z) + (sample - q(Θ0, z0)) and class = p(z) + (onehot - p(z0))
  (offsets frozen), computed here by central differences in float64."""
  d = _draws(1)
  theta0, z0 = d["theta"], d["logits"]
  onehot = np.eye(C)[d["drawn"]]

  def soft_loss(theta, z):
    p, p0 = _softmax(z, 1), _softmax(z0, 1)
    classes = p + (onehot - p0)
    q = classes @ _softmax(theta, 0)
    q0 = onehot @ _softmax(theta0, 0)
    mask = q + ((d["mask_noise"] < q0) - q0)
    return float((((d["features"] * mask) @ d["kernel"] + d["bias"]) * d["weights"]).sum())

  def numeric(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[i] = eps
      g[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return g

  want_theta = numeric(lambda t: soft_loss(t, z0), theta0)
  want_z = numeric(lambda z: soft_loss(theta0, z), z0)
  weights = jnp.asarray(d["weights"], jnp.float32)
  got_theta, got_z = jax.grad(
      lambda t, z: (_jax_pathways(d, t, z)["logits_masked"] * weights).sum(), argnums=(0, 1))(
          jnp.asarray(theta0, jnp.float32), jnp.asarray(z0, jnp.float32))
  assert np.abs(want_theta).max() > 0.1 and np.abs(want_z).max() > 0.1
  np.testing.assert_allclose(got_theta, want_theta, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(got_z, want_z, rtol=1e-3, atol=1e-4)
  # The complement pathway is a diagnostic: no gradient reaches Θ or the logits through it.
  zero = jax.grad(lambda t: _jax_pathways(d, t, jnp.asarray(z0, jnp.float32))[
      "logits_complement"].sum())(jnp.asarray(theta0, jnp.float32))
  np.testing.assert_array_equal(zero, 0.0)


def _ce(logits, labels):
  z = logits - logits.max(axis=1, keepdims=True)
  return -(z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(axis=1)))


def test_objective_averages_the_interpretation_loss_over_matching_samples_only():
  rng = np.random.default_rng(2)
  logits, masked = rng.normal(size=(B, C)), rng.normal(size=(B, C))
  labels = np.array([0, 1, 2, 3, 0, 1])
  matched = np.array([True, False, True, False, False, True])
  outputs = {"logits": jnp.asarray(logits, jnp.float32),
             "logits_masked": jnp.asarray(masked, jnp.float32),
             "logits_complement": jnp.asarray(masked[::-1], jnp.float32),
             "matched": jnp.asarray(matched)}
  loss, metrics = picnn.objective(outputs, jnp.asarray(labels), interpretation_weight=2.0)
  want = _ce(logits, labels).mean() + 2.0 * _ce(masked, labels)[matched].mean()
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(metrics["matched"], 0.5)
  np.testing.assert_allclose(metrics["ce_interpretation"], _ce(masked, labels)[matched].mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy_masked"], (masked.argmax(1) == labels).mean())
  # Unmatched samples get no gradient through the masked logits.
  grad = jax.grad(lambda m: picnn.objective({**outputs, "logits_masked": m}, jnp.asarray(labels),
                                            interpretation_weight=2.0)[0])(
                                                outputs["logits_masked"])
  assert np.abs(np.asarray(grad)[matched]).min() > 0
  np.testing.assert_array_equal(np.asarray(grad)[~matched], 0.0)
  # No sample matched: the interpretation term is exactly zero, and so is its gradient.
  none = {**outputs, "matched": jnp.zeros(B, bool)}
  loss, metrics = picnn.objective(none, jnp.asarray(labels), interpretation_weight=2.0)
  np.testing.assert_allclose(loss, _ce(logits, labels).mean(), rtol=1e-6)
  assert float(metrics["ce_interpretation"]) == 0.0
  grad = jax.grad(lambda m: picnn.objective({**none, "logits_masked": m}, jnp.asarray(labels),
                                            interpretation_weight=2.0)[0])(
                                                outputs["logits_masked"])
  np.testing.assert_array_equal(grad, 0.0)


def test_theta_update_is_adam_with_coupled_weight_decay():
  config = small_config(method="picnn")
  config.picnn.theta.update(learning_rate=0.01, weight_decay=0.1)
  tx = methods.for_config(config).gate_transform(optax.constant_schedule(0.01))
  rng = np.random.default_rng(3)
  theta, grad = rng.normal(size=(C, K)), rng.normal(size=(C, K))
  state = tx.init(jnp.asarray(theta, jnp.float32))
  for t in (1, 2):
    g = grad + 0.1 * theta  # torch.optim.Adam's weight_decay: added to the gradient
    if t == 1:
      m, v = 0.1 * g, 0.001 * g * g
    else:
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
    want = theta - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    updates, state = tx.update(jnp.asarray(grad, jnp.float32), state,
                               jnp.asarray(theta, jnp.float32))
    theta_new = np.asarray(optax.apply_updates(jnp.asarray(theta, jnp.float32), updates))
    np.testing.assert_allclose(theta_new, want, rtol=1e-5, atol=1e-6)
    theta = theta_new.astype(np.float64)


def test_every_method_starts_from_the_same_backbone_weights():
  """compare trains each method per seed from the same initialisation: the backbone's and the
  head's initial values do not depend on the method (the head's shape does, with PICNN's conv)."""
  x = jnp.zeros((1, 8, 8, 1))
  params = {}
  for name in methods.NAMES:
    config = small_config(method=name)
    config.model.name = "tiny"  # the check is of module names and rngs, not of size
    config.picnn.extra_conv_width = 0  # same K: the head is comparable too
    model = models.build_model(config.model, 10, methods.for_config(config))
    params[name] = jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"]
  for name in ("csg", "picnn"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, params["std"], params[name])


def test_picnn_fields_are_checked_and_unread_elsewhere():
  config = small_config(method="picnn")
  config.picnn.extra_conv_width = -1
  with pytest.raises(CSGError, match=r"config.picnn.extra_conv_width must be a whole number"):
    config_lib.validate(config)
  csg = small_config(method="csg")
  assert config_lib.unread_fields(csg, ["picnn.interpretation_weight"]) == [
      ("picnn.interpretation_weight", "method is 'csg'")]
  assert config_lib.unread_fields(small_config(method="picnn"), ["csg.gate.init"]) == [
      ("csg.gate.init", "method is 'picnn'")]
  assert config_lib.unread_fields(small_config(method="picnn"), ["picnn.theta.momentum"]) == [
      ("picnn.theta.momentum", "picnn.theta.optimizer is 'adam'")]


def _picnn_config():
  config = small_config(method="picnn")
  config.picnn.extra_conv_width = 12
  return config


@pytest.fixture(scope="module")
def picnn_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("picnn"))
  return workdir, training.train_and_evaluate(_picnn_config(), workdir)


def test_a_picnn_run_logs_its_diagnostics_and_assigns_filters_by_theta(picnn_run):
  workdir, results = picnn_run
  assert results["method"] == "picnn" and results["step"] == 23
  assert results["gate_density"] is None  # not defined for softmax(Θ)
  assert results["accuracy"] > 0.3  # 10 classes, 23 steps
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train = [r for r in rows if r.get("split") == "train"]
  for key in ("accuracy_masked", "accuracy_complement", "matched", "theta_confidence",
              "ce_interpretation"):
    assert all(key in r for r in train), key
  assert 0 < train[-1]["matched"] <= 1
  run = runs.load_run(workdir)
  assert set(run.state.gates["gate"]) == {"theta"}
  assert run.state.params["neck"]["conv"]["kernel"].shape == (3, 3, 16, 12)
  theta = run.state.host_gate()
  assert theta.shape == (10, 12)
  np.testing.assert_allclose(methods.class_matrix(run.config, run.state.gates),
                             _softmax(theta.astype(np.float64), 0), rtol=1e-5)
  from csg_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  evaluation = report.evaluate_workdir(workdir, run=run)
  counts = np.bincount(theta.argmax(axis=0), minlength=10)  # argmax of softmax(Θ) = of Θ
  assert [evaluation.report["filters_per_class"]["by_gate"][str(c)] for c in range(10)] == list(
      counts)
  assert evaluation.report["filters_per_class"]["closed_by_gate"] == 0


def test_a_crashed_picnn_run_resumes_bit_identical(picnn_run, tmp_path, monkeypatch):
  straight_dir, straight = picnn_run
  workdir = str(tmp_path / "crashed")

  class Crash(Exception):
    pass

  def crash(_):
    raise Crash()

  real = interrupt_batches_at(monkeypatch, 15, crash)
  with pytest.raises(Crash):
    training.train_and_evaluate(_picnn_config(), workdir)
  monkeypatch.setattr(data_lib, "train_batches", real)
  assert training.train_and_evaluate(_picnn_config(), workdir) == straight
  a, b = runs.load_run(straight_dir), runs.load_run(workdir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a.state),
                         jax.device_get(b.state))


@pytest.mark.slow
def test_compare_trains_every_method_per_seed_and_pairs_them(tmp_path):
  """compare --methods std,csg,picnn --seeds 0,1: one run per method and seed, the per-seed
  rows, and the three paired differences; each seed's runs start from the same weights."""
  from csg_jax.experiments import compare  # pylint: disable=g-import-not-at-top
  config = small_config(num_epochs=0.1, tensorboard_atlas_filters=0)
  config.model.name = "tiny"  # 3 methods x 2 seeds: the smallest network
  config.picnn.extra_conv_width = 0
  path = compare.train_and_compare(config, str(tmp_path), (0, 1),
                                   methods=("std", "csg", "picnn"))
  summary = json.loads((tmp_path / "compare.json").read_text())
  assert summary["methods"] == ["std", "csg", "picnn"] and summary["seeds"] == [0, 1]
  assert list(summary["differences"]) == ["csg-std", "picnn-std", "picnn-csg"]
  for run in summary["runs"]:
    for method in ("std", "csg", "picnn"):
      workdir = tmp_path / f"seed{run['seed']}" / method
      results = json.loads((workdir / "results.json").read_text())
      assert results["method"] == method and run[method]["accuracy"] == pytest.approx(
          json.loads((workdir / "eval" / "report.json").read_text())["accuracy"])
  d = summary["differences"]["picnn-csg"]["mis"]
  diffs = [r["picnn"]["mis"] - r["csg"]["mis"] for r in summary["runs"]]
  np.testing.assert_allclose(d["mean"], np.mean(diffs), rtol=1e-9)
  text = open(path).read()
  assert "| PICNN − CSG | MIS |" in text and "| PICNN − STD | accuracy |" in text
  assert os.path.exists(tmp_path / "seed1" / "compare.png")
  # Same initialisation per seed: step-0 backbone weights agree across methods (checked on the
  # init, since the runs are trained): PICNN without its conv builds the same parameter tree.
  a = runs.load_run(str(tmp_path / "seed0" / "std"))
  b = runs.load_run(str(tmp_path / "seed0" / "picnn"))
  assert jax.tree_util.tree_structure(a.state.params) == jax.tree_util.tree_structure(
      b.state.params)


def test_the_config_schema_lists_every_method_module():
  """config/schema.py names the methods without importing them (it stays free of JAX)."""
  assert config_lib.METHODS == methods.NAMES
  for name in methods.NAMES:
    assert methods.get(name).name == name
  with pytest.raises(CSGError, match="unknown method 'gates'; choose one of std, csg, picnn"):
    methods.get("gates")


def test_a_picnn_run_explains_and_draws_its_atlas_by_theta(picnn_run, tmp_path):
  from csg_jax.evaluation import explain_report  # pylint: disable=g-import-not-at-top
  workdir, _ = picnn_run
  out = explain_report.explain_workdir(workdir, indices=[0, 1], atlas=True,
                                       out=str(tmp_path / "explain"), filters_per_page=6)
  atlas = json.loads((tmp_path / "explain" / "atlas.json").read_text())
  theta = runs.load_run(workdir).state.host_gate()
  assert atlas["assigned_by"] == "gate"  # the method's class matrix, softmax(Θ)
  for row in atlas["filters"]:
    assert row["gate_class"] == int(theta[:, row["filter"]].argmax())
    np.testing.assert_allclose(row["gate_value"],
                               _softmax(theta.astype(np.float64), 0)[:, row["filter"]].max(),
                               rtol=1e-5)
  assert out["atlas"]["pages"] == len(atlas["pages"]) == 2  # 12 filters, 6 a page
  assert all((tmp_path / "explain" / page).stat().st_size > 0 for page in atlas["pages"])


def test_picnn_fields_reach_the_objective_the_plan_and_the_update():
  config = small_config(method="picnn")
  config.picnn.update(interpretation_weight=0.5)
  config.picnn.theta.update(optimizer="sgd", learning_rate=0.2, momentum=0.5, weight_decay=0.0)
  method = methods.for_config(config)
  rng = np.random.default_rng(4)
  logits, masked = rng.normal(size=(B, C)), rng.normal(size=(B, C))
  labels = np.array([0, 1, 2, 3, 0, 1])
  outputs = {"logits": jnp.asarray(logits, jnp.float32),
             "logits_masked": jnp.asarray(masked, jnp.float32),
             "logits_complement": jnp.asarray(masked, jnp.float32),
             "matched": jnp.ones(B, bool)}
  loss, _ = method.objective(outputs, jnp.asarray(labels), "picnn")
  np.testing.assert_allclose(loss, _ce(logits, labels).mean() + 0.5 * _ce(masked, labels).mean(),
                             rtol=1e-6)
  assert method.plan(640).optimizers["main"].gate_learning_rate == 0.2
  assert method.plan(640).phases == ("picnn",)
  tx = method.gate_transform(optax.constant_schedule(0.2))
  theta, grad = rng.normal(size=(C, K)), rng.normal(size=(C, K))
  state = tx.init(jnp.asarray(theta, jnp.float32))
  velocity = np.zeros_like(theta)
  for _ in range(2):  # SGD with momentum 0.5: v <- 0.5 v + g, theta <- theta - 0.2 v
    velocity = 0.5 * velocity + grad
    updates, state = tx.update(jnp.asarray(grad, jnp.float32), state,
                               jnp.asarray(theta, jnp.float32))
    theta_new = np.asarray(optax.apply_updates(jnp.asarray(theta, jnp.float32), updates))
    np.testing.assert_allclose(theta_new, theta - 0.2 * velocity, rtol=1e-5, atol=1e-6)
    theta = theta_new.astype(np.float64)
