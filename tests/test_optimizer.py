"""The optax partition: trunk, frozen layers and the gate each get their own update.

The gate's chain (sparsity gradient, its own SGD/momentum/Adam, projection) is checked against a
numpy re-statement of docs/csg-method.md written here, not against the library's functions.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csg_jax import gate as gate_lib
from csg_jax import methods
from csg_jax import optimizer as optimizer_lib
from csg_jax.config import base_config
from csg_jax.methods import csg as csg_method


def _config(schedule="joint", alternate=None, **gate):
  config = base_config("digits")
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                          schedule="constant", freeze="^backbone/stage1")
  config.csg.schedule = schedule
  config.csg.gate.update(dict(optimizer="sgd", learning_rate=0.5, momentum=0.0,
                              projection="max_normalize", sparsity_weight=0.0), **gate)
  config.csg.alternate.update(alternate or {})
  return config


def _optimizers(config, num_examples=100):
  config.update(num_epochs=1.0, batch_size=10)
  method = methods.for_config(config)
  return optimizer_lib.make_optimizers(config, method.plan(num_examples), method)


def _tree(seed):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  return {"params": {"backbone": {"stage1_block1": {"kernel": f(3, 3, 2, 4)},
                                  "stage2_block1": {"kernel": f(3, 3, 4, 4)}},
                     "head": {"kernel": f(4, 3) * 5, "bias": f(3)}},
          "gates": {"gate": {"G": jnp.asarray(r.uniform(size=(3, 4)), jnp.float32)}}}


def test_partition_updates_each_group_with_its_own_rule():
  config = _config()
  tx = _optimizers(config)["main"]
  tree, grads = _tree(0), _tree(1)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  new = optax.apply_updates(tree, updates)
  p, g, n = tree["params"], grads["params"], new["params"]
  # Frozen layer: unchanged.
  np.testing.assert_array_equal(n["backbone"]["stage1_block1"]["kernel"],
                                p["backbone"]["stage1_block1"]["kernel"])
  # Trunk: plain SGD at the trunk's learning rate, no projection (values outside [0, 1] stay).
  for path in (("backbone", "stage2_block1", "kernel"), ("head", "kernel"), ("head", "bias")):
    get = lambda t: t[path[0]][path[1]] if len(path) == 2 else t[path[0]][path[1]][path[2]]
    np.testing.assert_allclose(get(n), get(p) - 0.1 * get(g), rtol=1e-6)
  assert float(jnp.abs(n["head"]["kernel"]).max()) > 1.0
  # Gate: SGD at the gate's own learning rate, then the projection.
  expected = gate_lib.project_gates(tree["gates"]["gate"]["G"] - 0.5 * grads["gates"]["gate"]["G"])
  np.testing.assert_allclose(new["gates"]["gate"]["G"], expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(new["gates"]["gate"]["G"]).max(axis=0), 1.0)


@pytest.mark.parametrize("pattern", ["^backbone/stage1", "stage1", "block1/kernel$|nothing"])
def test_freeze_pattern_is_searched_anywhere_in_the_path(pattern):
  """Like the config's example 'backbone/stem|stage1': a regex found anywhere in the path."""
  labels = optimizer_lib.partition_labels(_tree(0), pattern)
  expect_frozen = {"^backbone/stage1": {"backbone/stage1_block1/kernel"},
                   "stage1": {"backbone/stage1_block1/kernel"},
                   "block1/kernel$|nothing": {"backbone/stage1_block1/kernel",
                                              "backbone/stage2_block1/kernel"}}[pattern]
  flat = {"/".join(str(getattr(k, "key", k)) for k in path[1:]): label
          for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
  assert {k for k, v in flat.items() if v == "frozen"} == expect_frozen
  assert flat["gate/G"] == "gates"
  assert flat["head/bias"] == "trunk"


def test_std_method_never_moves_a_gate():
  config = _config()
  config.method = "std"
  tx = _optimizers(config)["main"]
  tree, grads = _tree(0), _tree(1)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  np.testing.assert_array_equal(updates["gates"]["gate"]["G"], 0.0)


def test_alternate_has_two_optimizers_with_their_own_freezing():
  config = _config(schedule="alternate", alternate=dict(
      optimizer="sgd", learning_rate=0.01, freeze="^backbone/stage2", warmup_epochs=0, period=2,
      min_phase=1))
  txs = _optimizers(config)
  assert set(txs) == {"std", "csg"}
  tree, grads = _tree(0), _tree(1)
  std_updates, _ = txs["std"].update(grads, txs["std"].init(tree), tree)
  csg_updates, _ = txs["csg"].update(grads, txs["csg"].init(tree), tree)
  # STD epochs: the gate stays, stage2 trains with optimiser A's rate.
  np.testing.assert_array_equal(std_updates["gates"]["gate"]["G"], 0.0)
  np.testing.assert_allclose(std_updates["params"]["head"]["bias"],
                             -0.1 * grads["params"]["head"]["bias"], rtol=1e-6)
  # CSG epochs: stage1 and stage2 frozen, head at optimiser B's rate, gate moves.
  for stage in ("stage1_block1", "stage2_block1"):
    np.testing.assert_array_equal(csg_updates["params"]["backbone"][stage]["kernel"], 0.0)
  np.testing.assert_allclose(csg_updates["params"]["head"]["bias"],
                             -0.01 * grads["params"]["head"]["bias"], rtol=1e-6)
  assert float(jnp.abs(csg_updates["gates"]["gate"]["G"]).max()) > 0


def _schedule_config(name, **fields):
  opt = base_config().optimizer
  opt.update(schedule=name, **fields)
  return opt


@pytest.mark.parametrize("name,expected", [
    ("constant", [0.1, 0.1, 0.1]), ("multistep", [0.1, 0.01, 0.001]),
    ("cosine", [0.1, 0.05, 0.0])])
def test_learning_rate_schedules(name, expected):
  fn = optimizer_lib.learning_rate_schedule(_schedule_config(name, milestones=(0.4, 0.8)), 0.1,
                                            100)
  np.testing.assert_allclose([fn(0), fn(50), fn(100)], expected, rtol=1e-5, atol=1e-7)


def test_invalid_freeze_pattern_is_a_clear_error():
  from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
  with pytest.raises(CSGError, match="not a valid regular expression"):
    optimizer_lib.partition_labels(_tree(0), "stage1[")


def test_weight_decay_skips_biases():
  config = _config()
  config.optimizer.weight_decay = 0.5
  config.optimizer.freeze = ""
  tx = _optimizers(config)["main"]
  tree = _tree(0)
  zero = jax.tree_util.tree_map(jnp.zeros_like, tree)
  updates, _ = tx.update(zero, tx.init(tree), tree)
  np.testing.assert_array_equal(updates["params"]["head"]["bias"], 0.0)
  np.testing.assert_allclose(updates["params"]["head"]["kernel"],
                             -0.1 * 0.5 * tree["params"]["head"]["kernel"], rtol=1e-6)


# --- The gate's chain against a numpy re-statement -----------------------------------------


def _np_project(g, mode):
  g = np.asarray(g, np.float64)
  if mode == "max_normalize":  # each column divided by its max (if positive), then clipped
    col_max = g.max(axis=0, keepdims=True)
    g = np.where(col_max > 0, g / np.where(col_max > 0, col_max, 1.0), g)
  return np.clip(g, 0.0, 1.0)


def _np_sparsity_grad(g, weight, density):
  """d/dG of weight * max(0, sum|G| - density * G.size): weight * sign(G) over the budget.

  With JAX's subgradients at the kinks, which the library keeps from its loss-side hinge:
  d|x|/dx = +1 at x = 0, and max(0, h) passes half the gradient at h = 0.
  """
  excess = np.abs(g).sum() - density * g.size
  factor = 1.0 if excess > 0 else (0.5 if excess == 0 else 0.0)
  return weight * np.where(g >= 0, 1.0, -1.0) * factor


class _NumpyGateOptimizer:
  """SGD (optionally with heavy-ball momentum, optax/torch convention) or Adam, on G only."""

  def __init__(self, name, lr, momentum):
    self.name, self.lr, self.momentum = name, lr, momentum
    self.t, self.m, self.v = 0, 0.0, 0.0

  def update(self, grad):
    self.t += 1
    if self.name == "sgd":
      self.m = grad + self.momentum * self.m
      return -self.lr * self.m
    b1, b2, eps = 0.9, 0.999, 1e-8
    self.m = b1 * self.m + (1 - b1) * grad
    self.v = b2 * self.v + (1 - b2) * grad * grad
    m_hat, v_hat = self.m / (1 - b1 ** self.t), self.v / (1 - b2 ** self.t)
    return -self.lr * m_hat / (np.sqrt(v_hat) + eps)


@pytest.mark.parametrize("projection", ["max_normalize", "clip"])
@pytest.mark.parametrize("budget", ["over", "under"])
@pytest.mark.parametrize("name,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_gate_chain_equals_numpy_reference(projection, budget, name, momentum):
  weight, density, lr = 0.3, 0.1 if budget == "over" else 0.9, 0.05
  config = _config(optimizer=name, momentum=momentum, learning_rate=lr, projection=projection,
                   sparsity_weight=weight, target_density=density)
  tx = _optimizers(config)["main"]
  rng = np.random.default_rng(7)
  tree = _tree(0)
  g0 = rng.uniform(0.0, 1.0, size=(3, 4)).astype(np.float32)
  g0[1, 2] = -0.2  # a negative entry: sign(G) is -1 there
  tree["gates"]["gate"]["G"] = jnp.asarray(g0)
  assert (np.abs(g0).sum() > density * g0.size) == (budget == "over")
  reference, g_ref = _NumpyGateOptimizer(name, lr, momentum), g0.astype(np.float64)
  state = tx.init(tree)
  for step in range(3):
    ce_grad = rng.normal(size=(3, 4)).astype(np.float32)
    grads = jax.tree_util.tree_map(jnp.zeros_like, tree)
    grads["gates"]["gate"]["G"] = jnp.asarray(ce_grad)
    updates, state = tx.update(grads, state, tree)
    tree = optax.apply_updates(tree, updates)
    g_ref = _np_project(
        g_ref + reference.update(ce_grad + _np_sparsity_grad(g_ref, weight, density)),
        projection)
    np.testing.assert_allclose(tree["gates"]["gate"]["G"], g_ref, rtol=1e-5, atol=1e-6,
                               err_msg=f"step {step}")


def test_sparsity_gradient_only_over_budget():
  """The transform alone: zero under the budget, weight * sign(G) over it."""
  add = csg_method.add_sparsity_gradient(0.5, 0.25)
  under = jnp.array([[0.5, 0.0], [-0.25, 0.0]])  # sum |G| = 0.75 < 0.25 * 4 = 1
  over = jnp.array([[1.0, 0.0], [-0.5, 0.25]])  # sum |G| = 1.75 > 1
  zeros = jnp.zeros((2, 2))
  np.testing.assert_array_equal(add.update(zeros, add.init(under), under)[0], 0.0)
  np.testing.assert_array_equal(add.update(zeros, add.init(over), over)[0],
                                [[0.5, 0.5], [-0.5, 0.5]])  # JAX: d|x|/dx = +1 at 0
  with pytest.raises(ValueError, match="needs the current gate values"):
    add.update(zeros, add.init(over))


# --- The released SGD branch and rules (VOCPart/train/train.py lines 357-359, resnet_std.py) ----


def _np_clip_lmask(g):
  """resnet_std.py lines 129-134 on G [C, K] (theirs is [K, C]): each filter's classes divided
  by their max, whatever its sign, clamped to [0, 1]; numpy's 0/0 = nan like torch's."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.clip(g / g.max(axis=0, keepdims=True), 0.0, 1.0)


def test_released_sgd_branch_equals_torch_sgd_restated_in_numpy():
  """torch.optim.SGD(momentum=0.9, nesterov=True, weight_decay=1e-4) on G, the loss holding
  lambda * relu(torch.norm(G, 1) - budget) (0 subgradient at G = 0), then clip_lmask; entries
  at exactly 0 over the budget, a negative column (reopened) and a decayed bias."""
  weight, density, lr, wd = 0.3, 0.1, 0.05, 1e-4
  config = _config(optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=wd,
                   learning_rate=lr, projection="released", l1_subgradient="torch",
                   sparsity_weight=weight, target_density=density)
  config.optimizer.update(momentum=0.9, nesterov=True, weight_decay=wd,
                          decay_every_parameter=True)
  tx = _optimizers(config)["main"]
  tree = _tree(0)
  g0 = np.array([[0.5, 0.0, -0.3, 0.9], [0.2, 0.0, -0.1, 0.0], [0.0, 0.7, -0.2, 0.4]],
                np.float32)
  tree["gates"]["gate"]["G"] = jnp.asarray(g0)
  state = tx.init(tree)
  g_ref, buf = g0.astype(np.float64), np.zeros_like(g0, np.float64)
  rng = np.random.default_rng(3)
  for step in range(3):
    ce_grad = rng.normal(size=(3, 4)).astype(np.float32)
    grads = jax.tree_util.tree_map(jnp.zeros_like, tree)
    grads["gates"]["gate"]["G"] = jnp.asarray(ce_grad)
    bias_before = np.asarray(tree["params"]["head"]["bias"], np.float64)
    updates, state = tx.update(grads, state, tree)
    tree = optax.apply_updates(tree, updates)
    # torch: d_p = grad + wd * p; buf = momentum * buf + d_p; d_p = d_p + momentum * buf.
    over = np.abs(g_ref).sum() > density * g_ref.size
    d_p = ce_grad + weight * np.sign(g_ref) * over + wd * g_ref
    buf = 0.9 * buf + d_p
    g_ref = _np_clip_lmask(g_ref - lr * (d_p + 0.9 * buf))
    np.testing.assert_allclose(tree["gates"]["gate"]["G"], g_ref, rtol=1e-5, atol=1e-6,
                               err_msg=f"step {step}")
  # decay_every_parameter: the head's bias decays with a zero gradient (not only kernels).
  assert not np.allclose(np.asarray(tree["params"]["head"]["bias"]), bias_before)


def test_subgradient_at_zero_follows_l1_subgradient():
  over = jnp.array([[1.0, 0.0], [-0.5, 0.25]])  # sum |G| = 1.75 > 0.25 * 4 = 1
  at_budget = jnp.array([[0.5, 0.0], [-0.25, 0.25]])  # sum |G| = 1: exactly the budget
  zeros = jnp.zeros((2, 2))
  torch_rule = csg_method.add_sparsity_gradient(0.5, 0.25, "torch")
  np.testing.assert_array_equal(torch_rule.update(zeros, torch_rule.init(over), over)[0],
                                [[0.5, 0.0], [-0.5, 0.5]])  # torch.norm: 0 at G = 0
  np.testing.assert_array_equal(
      torch_rule.update(zeros, torch_rule.init(at_budget), at_budget)[0], 0.0)  # relu'(0) = 0
  jax_rule = csg_method.add_sparsity_gradient(0.5, 0.25, "jax")
  np.testing.assert_array_equal(jax_rule.update(zeros, jax_rule.init(over), over)[0],
                                [[0.5, 0.5], [-0.5, 0.5]])
  with pytest.raises(Exception, match="unknown L1 subgradient 'numpy'"):
    csg_method.add_sparsity_gradient(0.5, 0.25, "numpy")


# --- The trunk's options against numpy --------------------------------------------------------


def _trunk_leaves(tree):
  """The leaves the trunk transform updates under _config's freeze pattern (stage1 frozen)."""
  p = tree["params"]
  return [p["backbone"]["stage2_block1"]["kernel"], p["head"]["kernel"], p["head"]["bias"]]


@pytest.mark.parametrize("nesterov", [False, True])
def test_trunk_momentum_and_nesterov_equal_numpy(nesterov):
  config = _config()
  config.optimizer.update(momentum=0.9, nesterov=nesterov)
  tx = _optimizers(config)["main"]
  tree = _tree(0)
  state = tx.init(tree)
  ref = [np.asarray(x, np.float64) for x in _trunk_leaves(tree)]
  trace = [np.zeros_like(x) for x in ref]
  for step in range(3):
    grads = _tree(10 + step)
    updates, state = tx.update(grads, state, tree)
    tree = optax.apply_updates(tree, updates)
    for i, g in enumerate(_trunk_leaves(grads)):
      g = np.asarray(g, np.float64)
      trace[i] = g + 0.9 * trace[i]  # heavy ball, torch.optim.SGD's convention
      ref[i] = ref[i] - 0.1 * (g + 0.9 * trace[i] if nesterov else trace[i])
    for got, want in zip(_trunk_leaves(tree), ref):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")


def test_grad_clip_norm_scales_the_trunk_gradient_to_the_bound():
  config = _config()
  config.optimizer.grad_clip_norm = 0.5
  tx = _optimizers(config)["main"]
  tree, grads = _tree(0), _tree(1)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  g = [np.asarray(x, np.float64) for x in _trunk_leaves(grads)]
  norm = np.sqrt(sum((x**2).sum() for x in g))
  assert norm > 0.5  # so the bound is active
  for got, want in zip(_trunk_leaves(updates), g):
    np.testing.assert_allclose(got, -0.1 * want * 0.5 / norm, rtol=1e-5)
  # The gate is not part of the trunk's norm: its update is the plain projected SGD step.
  g0, gg = np.asarray(tree["gates"]["gate"]["G"]), np.asarray(grads["gates"]["gate"]["G"])
  np.testing.assert_allclose(updates["gates"]["gate"]["G"],
                             _np_project(g0 - 0.5 * gg, "max_normalize") - g0, atol=1e-6)


def test_adam_trunk_first_step_is_lr_times_sign():
  """Adam's first bias-corrected step is lr * g / (|g| + eps): about lr * sign(g)."""
  config = _config()
  config.optimizer.update(name="adam", learning_rate=0.01)
  tx = _optimizers(config)["main"]
  tree, grads = _tree(0), _tree(1)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  for got, g in zip(_trunk_leaves(updates), _trunk_leaves(grads)):
    g = np.asarray(g, np.float64)
    np.testing.assert_allclose(got, -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-5)


def test_cosine_warmup_and_multistep_decay_factor():
  warm = optimizer_lib.learning_rate_schedule(_schedule_config("cosine", warmup_steps=20), 0.2,
                                              100)
  # Linear from 0 to 0.2 over 20 steps, then a half cosine over the remaining 80.
  np.testing.assert_allclose([warm(0), warm(10), warm(20), warm(60), warm(100)],
                             [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-7)
  one = optimizer_lib.learning_rate_schedule(_schedule_config("cosine", warmup_steps=1), 0.2, 100)
  np.testing.assert_allclose([one(0), one(1)], [0.0, 0.2], atol=1e-7)  # one warm-up step
  step = optimizer_lib.learning_rate_schedule(
      _schedule_config("multistep", milestones=(0.3, 0.9), decay_factor=0.5), 0.2, 100)
  np.testing.assert_allclose([step(29), step(30), step(89), step(90)], [0.2, 0.1, 0.1, 0.05],
                             rtol=1e-6)


def test_schedules_of_short_runs():
  """A warm-up longer than training ends one step before the end; an optimiser with no steps
  (the alternate schedule's optimiser B when no CSG epoch fits in the run) still builds."""
  long_warmup = optimizer_lib.learning_rate_schedule(
      _schedule_config("cosine", warmup_steps=150), 0.2, 100)
  np.testing.assert_allclose([long_warmup(0), long_warmup(99), long_warmup(100)],
                             [0.0, 0.2, 0.0], atol=1e-7)
  for name in ("cosine", "constant"):  # counted as one step: the peak rate at step 0
    assert float(optimizer_lib.learning_rate_schedule(_schedule_config(name), 0.2, 0)(0)) == \
        pytest.approx(0.2)
  config = _config(schedule="alternate", alternate=dict(warmup_epochs=5, period=2, min_phase=1))
  config.optimizer.schedule = "cosine"
  txs = _optimizers(config)  # 1 epoch: no CSG epoch, optimiser B takes 0 steps
  tree = _tree(0)
  updates, _ = txs["csg"].update(_tree(1), txs["csg"].init(tree), tree)
  chex.assert_tree_all_finite(updates)


def test_multistep_milestone_epochs_use_the_optimizers_own_epoch_starts():
  # Own epochs start at own steps 0, 10, 20, 30: milestones after 2 and 3 epochs decay at 20 and
  # 30; one after 9 epochs never comes. The fractions are ignored when epochs are given.
  fn = optimizer_lib.learning_rate_schedule(
      _schedule_config("multistep", milestones=(0.1,), milestone_epochs=(2, 3, 9),
                       decay_factor=0.5), 0.2, 40, epoch_starts=(0, 10, 20, 30))
  np.testing.assert_allclose([fn(0), fn(19), fn(20), fn(29), fn(30), fn(1000)],
                             [0.2, 0.2, 0.1, 0.1, 0.05, 0.05], rtol=1e-6)
