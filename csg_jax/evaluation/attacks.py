"""Untargeted L∞ attacks (FGSM, PGD) on models that take normalised inputs, batched and jitted.

Units. ε and the PGD step size are in pixel units on the 0..1 scale (ε = 8/255 is the usual
"8 grey levels"). The model sees x_n = (x - mean) / std per channel, so in its input space the
ball is |x_n' - x_n| <= ε / std_c per channel and the valid box is
[(0 - mean_c) / std_c, (1 - mean_c) / std_c]; every iterate is projected onto both. Adversarial
images are not re-quantised to 8 bits.

The loss is the cross-entropy of the STD-path logits (the path used at test time) against the
true labels, summed over the batch: each image's gradient is its own (eval mode, no batch
statistics), so batching changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from csg_jax.errors import CSGError

ATTACKS = ("fgsm", "pgd")
LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.attacks = ATTACKS  # which attacks to run: fgsm, pgd
  c.epsilons = (4 / 255, 8 / 255, 16 / 255)  # L∞ radii in pixel units on the 0..1 scale
  c.pgd_steps = 10  # PGD iterations
  c.pgd_step_size = 0.0  # PGD step in pixel units (0..1); 0: 2.5 * ε / steps (Madry et al.)
  c.pgd_random_start = True  # PGD starts from a uniform point in the ε ball
  c.batch_size = 250  # images per attack step
  c.seed = 0  # random starts
  return c


def validate_config(c) -> None:
  if not c.attacks or set(c.attacks) - set(ATTACKS):
    raise CSGError(f"attacks.attacks is {tuple(c.attacks)}: choose from {ATTACKS}")
  if not c.epsilons or any(not 0 < e <= 1 for e in c.epsilons):
    raise CSGError(f"attacks.epsilons is {tuple(c.epsilons)}: give radii in (0, 1] on the 0..1 "
                   "pixel scale, e.g. (0.0078, 0.0314) for 2/255 and 8/255")
  if c.pgd_steps < 1:
    raise CSGError(f"attacks.pgd_steps is {c.pgd_steps}: set it to >= 1")
  if c.pgd_step_size < 0:
    raise CSGError(f"attacks.pgd_step_size is {c.pgd_step_size}: set it >= 0 (0: 2.5*eps/steps)")
  if c.batch_size < 1:
    raise CSGError(f"attacks.batch_size is {c.batch_size}: set it to a positive integer")


def input_box(mean: Sequence[float], std: Sequence[float]) -> tuple[jnp.ndarray, jnp.ndarray,
                                                                      jnp.ndarray]:
  """(low, high, 1/std), each [C]: the valid normalised range and the pixel-to-input scale."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (0.0 - mean) / std, (1.0 - mean) / std, 1.0 / std


def _loss_grad(logits_fn: LogitsFn, images: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  def loss(x):
    logits = logits_fn(x).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
  return jax.grad(loss)(images)


def _project(x: jnp.ndarray, center: jnp.ndarray, radius: jnp.ndarray, low: jnp.ndarray,
             high: jnp.ndarray) -> jnp.ndarray:
  # The ball around a valid image always meets the box, so clipping to one then the other lands
  # in their intersection.
  return jnp.clip(jnp.clip(x, center - radius, center + radius), low, high)


def fgsm(logits_fn: LogitsFn, images: jnp.ndarray, labels: jnp.ndarray, *, epsilon,
         mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  """One signed-gradient step of size ε (pixel units), projected onto the valid box."""
  low, high, scale = input_box(mean, std)
  radius = epsilon * scale
  step = radius * jnp.sign(_loss_grad(logits_fn, images, labels))
  return _project(images + step, images, radius, low, high)


def _default_unroll() -> bool:
  # XLA:CPU runs convolutions inside a while loop several times slower than straight-line code
  # (10 PGD steps of ResNet-8 on 250 images: 34 s rolled, 6 s unrolled); accelerators do not,
  # and there unrolling would only multiply compile time.
  return jax.default_backend() == "cpu"


def pgd(logits_fn: LogitsFn, images: jnp.ndarray, labels: jnp.ndarray, *, epsilon, step_size,
        steps: int, mean: Sequence[float], std: Sequence[float], random_start: bool, key=None,
        unroll: bool | None = None) -> jnp.ndarray:
  """Projected gradient ascent on the cross-entropy in the L∞ ball of radius ε (pixel units).

  `unroll` (None: only on CPU) unrolls the `steps` iterations in the compiled program.
  """
  low, high, scale = input_box(mean, std)
  radius = epsilon * scale
  alpha = step_size * scale
  x = images
  if random_start:
    if key is None:
      raise CSGError("pgd(random_start=True) needs a PRNG key: pass key=jax.random.PRNGKey(seed)")
    noise = jax.random.uniform(key, images.shape, jnp.float32, -1.0, 1.0)
    x = _project(images + noise * radius, images, radius, low, high)

  def body(_, x):
    x = x + alpha * jnp.sign(_loss_grad(logits_fn, x, labels))
    return _project(x, images, radius, low, high)

  unroll = _default_unroll() if unroll is None else unroll
  return jax.lax.fori_loop(0, steps, body, x, unroll=steps if unroll else 1)


def pgd_step_size(cfg, epsilon: float) -> float:
  return cfg.pgd_step_size or 2.5 * epsilon / cfg.pgd_steps


def make_attack_fns(model, mean: Sequence[float], std: Sequence[float], *, pgd_steps: int,
                    random_start: bool):
  """Jitted `fgsm(variables, images, labels, eps)` and `pgd(variables, images, labels, eps,
  step_size, key)` for a CSGClassifier; ε and step sizes are traced (one compile for all)."""
  mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

  def logits_fn(variables):
    return lambda x: model.apply(variables, x, train=False)["logits"]

  @jax.jit
  def fgsm_fn(variables, images, labels, epsilon):
    return fgsm(logits_fn(variables), images, labels, epsilon=epsilon, mean=mean, std=std)

  @jax.jit
  def pgd_fn(variables, images, labels, epsilon, step_size, key):
    return pgd(logits_fn(variables), images, labels, epsilon=epsilon, step_size=step_size,
               steps=pgd_steps, mean=mean, std=std, random_start=random_start, key=key)

  return fgsm_fn, pgd_fn
