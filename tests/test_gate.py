"""The gate module and its plain functions: known values and invariants."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csg_jax import gate as gate_lib
from csg_jax import models
from csg_jax import methods
from csg_jax.config import base_config
from csg_jax.methods import csg as csg_method


class GateFunctionsTest(chex.TestCase):
  """The pure gate functions, with and without jit, on device arrays and on numpy inputs."""

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_max_normalize_projection_invariants(self):
    project = self.variant(lambda g: gate_lib.project_gates(g, "max_normalize"))
    for seed in range(3):
      rng = np.random.default_rng(seed)
      g = rng.normal(0.3, 1.0, size=(10, 64)).astype(np.float32)
      g[:, 3] = 0.0  # a filter with no open class
      g[:, 5] = -np.abs(g[:, 5]) - 0.1  # a filter whose max is negative
      p = np.asarray(project(g))
      chex.assert_tree_all_finite(p)
      assert p.min() >= 0.0 and p.max() <= 1.0
      positive = g.max(axis=0) > 0
      np.testing.assert_array_equal(p.max(axis=0)[positive], 1.0)
      np.testing.assert_array_equal(p[:, ~positive], 0.0)
      # Column-wise known answer: clip(g / max, 0, 1).
      expected = np.clip(g[:, positive] / g[:, positive].max(axis=0), 0, 1)
      np.testing.assert_allclose(p[:, positive], expected, rtol=1e-6)
      # A projection is idempotent.
      np.testing.assert_allclose(project(p), p, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_clip_projection(self):
    project = self.variant(lambda g: gate_lib.project_gates(g, "clip"))
    g = np.array([[-0.5, 0.2], [1.5, 0.4]], np.float32)
    np.testing.assert_allclose(project(g), [[0.0, 0.2], [1.0, 0.4]])

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_density_and_hinge_values(self):
    density = self.variant(gate_lib.l1_density)
    hinge = self.variant(gate_lib.sparsity_hinge, static_argnums=1)
    g = np.array([[1.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.25, 0.25]], np.float32)  # sum 2.5 over 8
    assert float(density(g)) == pytest.approx(2.5 / 8)
    assert float(hinge(g, 0.25)) == pytest.approx(2.5 - 2.0)
    assert float(hinge(g, 0.5)) == 0.0  # within budget: no penalty


def test_released_projection_reopens_a_negative_column_and_gives_nan_for_a_zero_one():
  """clip_lmask (resnet_std.py lines 129-134): divide by the column max, whatever its sign."""
  g = jnp.array([[0.5, -0.2, 0.0, 2.0],
                 [0.25, -0.4, 0.0, 1.0],
                 [0.0, -0.1, 0.0, 0.5]])
  out = np.asarray(gate_lib.project_gates(g, "released"))
  np.testing.assert_array_equal(out[:, 0], [1.0, 0.5, 0.0])  # positive max: / max
  np.testing.assert_array_equal(out[:, 1], [1.0, 1.0, 1.0])  # negative max: every entry >= 1
  assert np.isnan(out[:, 2]).all()  # 0 / 0, as torch
  np.testing.assert_array_equal(out[:, 3], [1.0, 0.5, 0.25])
  # Ours closes the last two instead: no filter can stay closed under the released rule.
  np.testing.assert_array_equal(np.asarray(gate_lib.project_gates(g, "max_normalize"))[:, 1:3],
                                0.0)


def test_unknown_projection_is_an_error():
  with pytest.raises(ValueError, match="unknown gate projection"):
    gate_lib.project_gates(jnp.zeros((2, 2)), "softmax")


def test_gating_equals_per_sample_loop():
  num_classes, k = 5, 6
  module = gate_lib.ClassSpecificGate(num_classes, k)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, k))
  labels = jnp.array([0, 4, 2, 4])
  variables = module.init(jax.random.PRNGKey(1), x, labels)
  assert set(variables) == {"gates"}  # G is not a parameter
  g = jax.random.uniform(jax.random.PRNGKey(2), (num_classes, k))
  out = module.apply({"gates": {"G": g}}, x, labels)
  expected = np.stack([np.asarray(x[b]) * np.asarray(g[labels[b]]) for b in range(4)])
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  # Pooled features [B, K] are gated by the same rows.
  pooled = module.apply({"gates": {"G": g}}, x.mean((1, 2)), labels)
  np.testing.assert_allclose(pooled, expected.mean((1, 2)), rtol=1e-5, atol=1e-6)


def test_gate_init_value_from_argument():
  module = gate_lib.ClassSpecificGate(3, 4, init_value=0.7)
  variables = module.init(jax.random.PRNGKey(0), jnp.ones((2, 4)), jnp.array([0, 1]))
  np.testing.assert_array_equal(variables["gates"]["G"], np.full((3, 4), 0.7, np.float32))
  # The default is the released code's 0.5 everywhere (docs/csg-method.md §4).
  default = gate_lib.ClassSpecificGate(3, 4).init(jax.random.PRNGKey(0), jnp.ones((2, 4)),
                                                  jnp.array([0, 1]))
  np.testing.assert_array_equal(default["gates"]["G"], np.full((3, 4), 0.5, np.float32))


@pytest.mark.parametrize("name", ["tiny", "resnet8"])
def test_std_and_csg_logits_equal_with_open_gate(name):
  backbone, k = models.build_backbone(name)
  model = models.Classifier(backbone, num_classes=7, num_filters=k,
                            gate=csg_method.GatedPath(7, k))
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
  labels = jnp.array([1, 6, 0])
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x, labels)
  assert gate_lib.gate_values(variables["gates"]).shape == (7, k)
  variables = {**variables, "gates": jax.tree_util.tree_map(jnp.ones_like, variables["gates"])}
  apply = jax.jit(model.apply)  # one compile instead of op-by-op dispatch of a ResNet
  out = apply(variables, x, labels)
  np.testing.assert_allclose(out["logits"], out["logits_csg"], rtol=1e-6)
  # With a real gate the CSG path differs and equals the head applied to gated pooled features.
  g = jax.random.uniform(jax.random.PRNGKey(3), (7, k))
  out = apply({**variables, "gates": {"gate": {"G": g}}}, x, labels)
  head = variables["params"]["head"]
  manual = (out["features"] * g[labels]) @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(out["logits_csg"], manual, rtol=1e-5, atol=1e-5)
  chex.assert_shape(out["feature_map"], (3, None, None, k))


def test_gate_wraps_any_backbone():
  """A user's own backbone works as long as it returns [B, H, W, K]."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class MyBackbone(nn.Module):

    @nn.compact
    def __call__(self, x, *, train=False):
      return nn.relu(nn.Conv(12, (3, 3))(x))

  model = models.Classifier(MyBackbone(), num_classes=3, num_filters=12,
                            gate=csg_method.GatedPath(3, 12))
  x = jnp.ones((2, 5, 5, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x, jnp.array([0, 2]))
  chex.assert_shape(out["logits_csg"], (2, 3))


def test_model_names():
  for name, k in [("resnet20", 64), ("resnet32", 64), ("resnet56", 64), ("resnet18", 512),
                  ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048), ("resnet152", 2048),
                  ("tiny", 16)]:
    assert models.build_backbone(name)[1] == k, name
  from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
  with pytest.raises(CSGError, match="unknown model 'resnet21'"):
    models.build_backbone("resnet21")


def test_model_width_and_dtype_reach_the_trunk():
  config = base_config()
  config.model.update(name="resnet8", width=4, dtype="bfloat16", pytorch_padding=True)
  config.csg.gate.init = 0.25
  model = models.build_model(config.model, 3, methods.for_config(config))
  x = jnp.ones((2, 8, 8, 1))
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)  # compiled: bfloat16 op by op is slow
  out = jax.jit(lambda v: model.apply(v, x))(variables)
  chex.assert_shape(out["features"], (2, 16))  # K = 4 * width for the CIFAR family
  assert out["feature_map"].dtype == jnp.bfloat16  # the trunk computes in bfloat16
  assert out["logits"].dtype == jnp.float32  # pooling and head stay in float32
  np.testing.assert_array_equal(variables["gates"]["gate"]["G"], np.full((3, 16), 0.25))
