"""The run plan: total steps, the phase of every step, each optimiser's role and step count.

Expected values are worked out by hand from the rules in docs/csg-method.md (epoch of step s is
floor(s * B / N); alternate: epoch e is a CSG epoch iff e >= warmup and e % period >= min_phase).
"""

import dataclasses

import pytest

from csg_jax import methods
from csg_jax.config import base_config
from csg_jax.plan import OptimizerRole


def _config(method="csg", schedule="joint", num_epochs=6.0, batch_size=10, **alternate):
  config = base_config("digits")
  config.update(method=method, num_epochs=num_epochs, batch_size=batch_size)
  config.csg.schedule = schedule
  config.csg.alternate.update(alternate)
  return config


def test_total_steps_rounds_up_partial_batches():
  assert methods.make_plan(_config(num_epochs=1.0, batch_size=64), 1437).total_steps == 23
  assert methods.make_plan(_config(num_epochs=2.5, batch_size=10), 100).total_steps == 25
  assert methods.make_plan(_config(num_epochs=0.001, batch_size=10), 100).total_steps == 1


def test_std_and_joint_use_one_optimizer():
  std = methods.make_plan(_config(method="std"), 100)
  assert std.phases == ("std",) and std.optimizer_of_phase == {"std": "main"}
  assert std.optimizers == {"main": OptimizerRole("sgd", 0.1, "", 60)}
  assert {std.phase(s) for s in range(60)} == {"std"}
  joint = methods.make_plan(_config(), 100)
  assert joint.phases == ("joint",)
  assert joint.optimizers == {"main": OptimizerRole("sgd", 0.1, "", 60, gate_learning_rate=0.1)}
  assert {joint.phase(s) for s in range(60)} == {"joint"}


def test_std_method_ignores_the_alternate_schedule():
  plan = methods.make_plan(_config(method="std", schedule="alternate"), 100)
  assert plan.phases == ("std",) and set(plan.optimizers) == {"main"}


def test_alternate_epoch_rule_and_step_counts():
  config = _config(schedule="alternate", warmup_epochs=2, period=3, min_phase=2)
  plan = methods.make_plan(config, 100)
  assert [e for e in range(12) if plan.is_second_phase_epoch(e)] == [2, 5, 8, 11]
  # 100 examples, batches of 10: 10 steps an epoch; of epochs 0..5, epochs 2 and 5 are CSG.
  phases = [plan.phase(s) for s in range(60)]
  assert phases[19] == "std" and phases[20] == "csg" and phases[29] == "csg"
  assert phases[30] == "std" and phases[50] == "csg"
  assert phases.count("csg") == 20
  # Optimiser B (adam 1e-3 by default) trains the trunk and G in CSG epochs only.
  assert plan.optimizers == {"std": OptimizerRole("sgd", 0.1, "", 40),
                             "csg": OptimizerRole("adam", 1e-3, "", 20, gate_learning_rate=0.1)}
  assert plan.optimizer_of_phase == {"std": "std", "csg": "csg"}


def test_alternate_epochs_straddle_batches_by_examples():
  # N = 25, B = 10: step s covers examples [10s, 10s + 10); epoch = floor(10s / 25).
  plan = methods.make_plan(_config(schedule="alternate", num_epochs=4.0, warmup_epochs=1,
                                  period=2, min_phase=1), 25)
  assert plan.total_steps == 10
  epochs = [plan.epoch(s) for s in range(10)]
  assert epochs == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
  assert [plan.phase(s) for s in range(10)] == ["std"] * 3 + ["csg"] * 2 + ["std"] * 3 + \
      ["csg"] * 2


@pytest.mark.parametrize("warmup", [0, 7])
def test_every_alternate_step_is_counted_once(warmup):
  plan = methods.make_plan(_config(schedule="alternate", warmup_epochs=warmup, period=3,
                                  min_phase=1), 100)
  assert sum(r.steps for r in plan.optimizers.values()) == plan.total_steps


def test_a_plan_cannot_be_changed_after_it_is_built():
  plan = methods.make_plan(_config(schedule="alternate"), 100)
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.total_steps = 1
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.optimizers["csg"].steps = 0


def test_epoch_starts_count_each_optimizers_own_epochs():
  # 10 examples, batches of 5: 2 steps an epoch, 9 epochs. CSG epochs: e >= 2 and e % 3 >= 2,
  # i.e. 2, 5, 8; STD epochs 0, 1, 3, 4, 6, 7.
  config = _config(schedule="alternate", num_epochs=9.0, batch_size=5, warmup_epochs=2,
                   period=3, min_phase=2)
  plan = methods.make_plan(config, 10)
  assert plan.epoch_starts("std") == (0, 2, 4, 6, 8, 10)
  assert plan.epoch_starts("csg") == (0, 2, 4)
  # Epochs straddling batches (7 examples, batches of 3): an epoch starts at the first step
  # whose first example lies in it: steps 0, 3 (example 9 is in epoch 1), 5 (example 15).
  assert methods.make_plan(_config(num_epochs=3.0, batch_size=3), 7).epoch_starts("main") == (
      0, 3, 5)
