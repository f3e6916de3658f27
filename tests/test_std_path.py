"""On a gated model, evaluation and attacks use the STD path (docs/csg-method.md §2): the gate
is a training device, never applied at test time."""

import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csg_jax import models
from csg_jax.methods import csg as csg_method
from csg_jax.evaluation import attacks
from csg_jax.evaluation import predict

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def gated():
  # A ResNet with batch norm: at test time it must use the running statistics (train=False).
  backbone, k = models.build_backbone("resnet8", width=2)
  model = models.Classifier(backbone, num_classes=5, num_filters=k,
                            gate=csg_method.GatedPath(5, k))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(20, 6, 6, 3)), jnp.float32)
  labels = jnp.asarray(np.arange(20) % 5, jnp.int32)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), images[:1])
  # A gate far from uniform: each class keeps a few filters, so gating changes the logits.
  g = (rng.random((5, k)) > 0.6).astype(np.float32) * rng.random((5, k)).astype(np.float32)
  variables = {**variables, "gates": {"gate": {"G": jnp.asarray(g)}}}
  return model, variables, images, labels


def test_eval_step_predicts_with_the_ungated_head(gated):
  model, variables, images, labels = gated
  out = model.apply(variables, images, labels)
  head = variables["params"]["head"]
  std_logits = np.asarray(out["features"]) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  gated_logits = np.asarray(out["logits_csg"])
  assert (std_logits.argmax(-1) != gated_logits.argmax(-1)).any()  # the two paths do differ
  state = types.SimpleNamespace(variables=lambda: variables)
  batch = {"image": images, "label": labels, "mask": jnp.ones(20, bool)}
  result = jax.jit(lambda b: predict.eval_step(state, b, model=model))(batch)
  np.testing.assert_array_equal(result["prediction"], std_logits.argmax(-1))
  np.testing.assert_allclose(result["features"], out["features"], rtol=1e-6)


def test_attacks_differentiate_the_ungated_logits(gated):
  model, variables, images, labels = gated
  fgsm_fn, _ = attacks.make_attack_fns(model, MEAN, STD, pgd_steps=1, random_start=False)
  got = np.asarray(fgsm_fn(variables, images, labels, 8 / 255))
  std_path = attacks.fgsm(lambda x: model.apply(variables, x)["logits"], images, labels,
                          epsilon=8 / 255, mean=MEAN, std=STD)
  gated_path = attacks.fgsm(lambda x: model.apply(variables, x, labels)["logits_csg"], images,
                            labels, epsilon=8 / 255, mean=MEAN, std=STD)
  np.testing.assert_allclose(got, std_path, atol=1e-6)
  assert np.abs(np.asarray(gated_path) - np.asarray(std_path)).max() > 1e-3


def test_attack_fns_trace_once_for_every_epsilon(gated, monkeypatch):
  """ε and the step size are traced arguments: one compilation serves every radius."""
  model, variables, images, labels = gated
  # The jitted functions call attacks.fgsm / attacks.pgd only while tracing.
  monkeypatch.setattr(attacks, "fgsm", chex.assert_max_traces(attacks.fgsm, n=1))
  monkeypatch.setattr(attacks, "pgd", chex.assert_max_traces(attacks.pgd, n=1))
  fgsm_fn, pgd_fn = attacks.make_attack_fns(model, MEAN, STD, pgd_steps=2, random_start=True)
  for eps in (2 / 255, 4 / 255, 8 / 255):
    chex.assert_tree_all_finite(fgsm_fn(variables, images, labels, eps))
    chex.assert_tree_all_finite(pgd_fn(variables, images, labels, eps, eps / 2,
                                       jax.random.PRNGKey(1)))
