"""The optax partition: trunk, frozen layers and the gate each get their own update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csg_jax import gate as gate_lib
from csg_jax import optimizer as optimizer_lib
from csg_jax import schedule
from csg_jax.config_base import base_config


def _config(**csg):
  config = base_config("digits")
  config.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.0, weight_decay=0.0,
                          schedule="constant", freeze="^backbone/stage1")
  config.csg.update(gate_optimizer="sgd", gate_learning_rate=0.5, gate_momentum=0.0,
                    projection="max_normalize", **csg)
  return config


def _tree(seed):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)
  return {"params": {"backbone": {"stage1_block1": {"kernel": f(3, 3, 2, 4)},
                                  "stage2_block1": {"kernel": f(3, 3, 4, 4)}},
                     "head": {"kernel": f(4, 3) * 5, "bias": f(3)}},
          "gates": {"gate": {"G": jnp.asarray(r.uniform(size=(3, 4)), jnp.float32)}}}


def test_partition_updates_each_group_with_its_own_rule():
  config = _config()
  tx = optimizer_lib.make_optimizers(config, {"main": 10})["main"]
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


def test_frozen_parameter_names():
  names = optimizer_lib.frozen_parameter_names(_tree(0)["params"], "^backbone/stage1")
  assert names == ["backbone/stage1_block1/kernel"]


def test_std_method_never_moves_a_gate():
  config = _config()
  config.method = "std"
  tx = optimizer_lib.make_optimizers(config, {"main": 10})["main"]
  tree, grads = _tree(0), _tree(1)
  updates, _ = tx.update(grads, tx.init(tree), tree)
  np.testing.assert_array_equal(updates["gates"]["gate"]["G"], 0.0)


def test_alternate_has_two_optimizers_with_their_own_freezing():
  config = _config(schedule="alternate", csg_optimizer="sgd", csg_learning_rate=0.01,
                   csg_freeze="^backbone/stage2")
  txs = optimizer_lib.make_optimizers(config, {"std": 6, "csg": 4})
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


def test_alternate_epoch_rule_and_step_counts():
  config = _config(schedule="alternate", warmup_epochs=2, period=3, min_phase=2)
  csg_epochs = [e for e in range(12) if schedule.is_csg_epoch(e, config.csg)]
  assert csg_epochs == [2, 5, 8, 11]
  config.num_epochs, config.batch_size = 6.0, 10
  # 100 examples, batches of 10: 10 steps an epoch; epochs 2 and 5 are CSG epochs.
  phases = [schedule.phase_of_step(s, config, 100) for s in range(60)]
  assert phases[19] == "std" and phases[20] == "csg" and phases[29] == "csg"
  assert schedule.steps_per_optimizer(config, 100) == {"std": 40, "csg": 20}


@pytest.mark.parametrize("name,expected", [
    ("constant", [0.1, 0.1, 0.1]), ("multistep", [0.1, 0.01, 0.001]),
    ("cosine", [0.1, 0.05, 0.0])])
def test_learning_rate_schedules(name, expected):
  fn = optimizer_lib.learning_rate_schedule(name, 0.1, 100, milestones=(0.4, 0.8))
  np.testing.assert_allclose([fn(0), fn(50), fn(100)], expected, rtol=1e-5, atol=1e-7)


def test_invalid_freeze_pattern_is_a_clear_error():
  from csg_jax.errors import CSGError  # pylint: disable=g-import-not-at-top
  with pytest.raises(CSGError, match="not a valid regular expression"):
    optimizer_lib.partition_labels(_tree(0), "stage1[")


def test_weight_decay_skips_biases():
  config = _config()
  config.optimizer.weight_decay = 0.5
  config.optimizer.freeze = ""
  tx = optimizer_lib.make_optimizers(config, {"main": 10})["main"]
  tree = _tree(0)
  zero = jax.tree_util.tree_map(jnp.zeros_like, tree)
  updates, _ = tx.update(zero, tx.init(tree), tree)
  np.testing.assert_array_equal(updates["params"]["head"]["bias"], 0.0)
  np.testing.assert_allclose(updates["params"]["head"]["kernel"],
                             -0.1 * 0.5 * tree["params"]["head"]["kernel"], rtol=1e-6)
