"""The training objective, against references written from docs/csg-method.md.

- `methods.csg.objective` per phase against a numpy cross-entropy, with lambda1 != 1.
- One `train_step` (sparsity in the gate's optax transform) against an explicit reference of the
  paper's formulation with the hinge inside the loss:
      CE_std + lambda1 * CE_csg + lambda2 * max(0, ||G||_1 - d*C*K),
  differentiated by JAX and updated by plain optax SGD / Adam plus a numpy projection.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from csg_jax import methods
from csg_jax import models
from csg_jax import optimizer as optimizer_lib
from csg_jax.config import base_config
from csg_jax.methods import csg as csg_method
from csg_jax.training import loop
from csg_jax.runs import state as state_lib

LAMBDA1, LAMBDA2, DENSITY = 0.37, 0.3, 0.1


def _np_cross_entropy(logits, labels):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -log_p[np.arange(len(labels)), labels].mean()


class ObjectiveTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_objective_by_phase(self):
    rng = np.random.default_rng(0)
    outputs = {"logits": rng.normal(size=(6, 4)).astype(np.float32),
               "logits_csg": rng.normal(size=(6, 4)).astype(np.float32) * 3}
    labels = np.array([0, 3, 1, 1, 2, 0], np.int32)
    ce_std = _np_cross_entropy(outputs["logits"], labels)
    ce_csg = _np_cross_entropy(outputs["logits_csg"], labels)
    expected = {"std": ce_std, "joint": ce_std + LAMBDA1 * ce_csg, "csg": ce_csg}
    for phase, want in expected.items():
      fn = self.variant(lambda o, y, phase=phase: csg_method.objective(
          o, y, phase, gated_loss_weight=LAMBDA1))
      loss, metrics = fn(outputs, labels)
      np.testing.assert_allclose(loss, want, rtol=1e-6, err_msg=phase)
      np.testing.assert_allclose(metrics["ce_std"], ce_std, rtol=1e-6)
      if phase != "std":
        np.testing.assert_allclose(metrics["ce_csg"], ce_csg, rtol=1e-6)
        np.testing.assert_allclose(metrics["accuracy_csg"],
                                   (outputs["logits_csg"].argmax(-1) == labels).mean())
    with self.assertRaisesRegex(ValueError, "unknown phase"):
      csg_method.objective(outputs, labels, "both")
    # lambda1 defaults to 1, the paper's plain sum of the two cross-entropies.
    np.testing.assert_allclose(csg_method.objective(outputs, labels, "joint")[0], ce_std + ce_csg,
                               rtol=1e-6)


def _config(gate_optimizer):
  config = base_config("digits")
  config.model.name = "tiny"
  config.update(num_epochs=1.0, batch_size=16)
  config.optimizer.update(name="sgd", learning_rate=0.05, momentum=0.9, weight_decay=0.0,
                          schedule="constant")
  config.csg.gated_loss_weight = LAMBDA1
  config.csg.gate.update(optimizer=gate_optimizer, learning_rate=0.2, momentum=0.9,
                         sparsity_weight=LAMBDA2, target_density=DENSITY,
                         projection="max_normalize")
  return config


def _np_max_normalize(g):
  g = np.asarray(g, np.float64)
  col_max = g.max(axis=0, keepdims=True)
  return np.clip(np.where(col_max > 0, g / np.where(col_max > 0, col_max, 1.0), g), 0.0, 1.0)


class OldFormulationTest(chex.TestCase):
  """One step of the new formulation equals the old one (hinge in the loss) within 1e-6."""

  def _check(self, gate_optimizer, reference_gate_tx):
    config = _config(gate_optimizer)
    method = methods.for_config(config)
    model = models.build_model(config.model, 10, method)
    tx = optimizer_lib.make_optimizers(config, method.plan(16), method)["main"]
    state = state_lib.create_train_state(model, {"main": tx}, (8, 8, 1), jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, size=16), jnp.int32)}

    new_state, metrics = jax.jit(lambda s, b: loop.train_step(
        s, b, model=model, method=method, tx=tx, phase="joint", optimizer_name="main",
        seed=0))(state, batch)

    # The reference: the paper's loss with the hinge inside, plain optax, numpy projection.
    def old_loss(trainable):
      variables = {"params": trainable["params"], "gates": trainable["gates"]}
      out = model.apply(variables, batch["image"], batch["label"], train=True)
      ce = lambda logits: optax.softmax_cross_entropy_with_integer_labels(
          logits, batch["label"]).mean()
      g = trainable["gates"]["gate"]["G"]
      hinge = jnp.maximum(0.0, jnp.abs(g).sum() - DENSITY * g.size)
      return ce(out["logits"]) + LAMBDA1 * ce(out["logits_csg"]) + LAMBDA2 * hinge

    trainable = state.trainable()
    grads = jax.grad(old_loss)(trainable)
    trunk_tx = optax.sgd(0.05, momentum=0.9)
    params_update, _ = trunk_tx.update(grads["params"], trunk_tx.init(trainable["params"]))
    want_params = optax.apply_updates(trainable["params"], params_update)
    g0 = trainable["gates"]["gate"]["G"]
    g_update, _ = reference_gate_tx.update(grads["gates"]["gate"]["G"],
                                           reference_gate_tx.init(g0))
    want_gate = _np_max_normalize(np.asarray(g0) + np.asarray(g_update))

    chex.assert_trees_all_close(new_state.params, want_params, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(new_state.gate_matrix(), want_gate, atol=1e-6, rtol=1e-6)
    chex.assert_tree_all_finite(new_state)
    chex.assert_trees_all_equal_shapes(new_state, state)
    # Logged after the update and projection: the density of the new G, and its hinge.
    new_g = np.asarray(new_state.gate_matrix(), np.float64)
    np.testing.assert_allclose(metrics["gate_density"], np.abs(new_g).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["hinge"],
                               max(0.0, np.abs(new_g).sum() - DENSITY * new_g.size), rtol=1e-5)

  def test_sgd_gate(self):
    self._check("sgd", optax.sgd(0.2, momentum=0.9))

  def test_adam_gate(self):
    self._check("adam", optax.adam(0.2))
