"""FGSM and PGD: inside the ε ball and the valid pixel box, loss goes up, PGD(1 step) = FGSM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csg_jax import attacks
from csg_jax import models
from csg_jax.errors import CSGError

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def setup():
  model = models.CSGClassifier(models.TinyCNN(width=4), 4, 8, use_gate=False)
  rng = np.random.default_rng(0)
  pixels = rng.random((16, 12, 12, 3)).astype(np.float32)
  pixels[0] = 0.0  # corners of the box: the attack must not leave [0, 1]
  pixels[1] = 1.0
  images = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
  labels = (np.arange(16) % 4).astype(np.int32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  logits_fn = lambda x: model.apply(variables, x, train=False)["logits"]
  return model, variables, logits_fn, jnp.asarray(images), jnp.asarray(labels)


def _to_pixels(x):
  return np.asarray(x) * np.array(STD) + np.array(MEAN)


def _loss(logits_fn, x, y):
  return float(optax.softmax_cross_entropy_with_integer_labels(logits_fn(x), y).sum())


@pytest.mark.parametrize("epsilon", [2 / 255, 8 / 255])
def test_fgsm_stays_in_the_ball_and_raises_the_loss(setup, epsilon):
  _, _, logits_fn, images, labels = setup
  adv = attacks.fgsm(logits_fn, images, labels, epsilon=epsilon, mean=MEAN, std=STD)
  delta = _to_pixels(adv) - _to_pixels(images)
  assert np.abs(delta).max() <= epsilon + 1e-6
  assert np.abs(delta).max() >= epsilon - 1e-6  # a full step where the box allows
  pixels = _to_pixels(adv)
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  assert _loss(logits_fn, adv, labels) > _loss(logits_fn, images, labels)


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_in_the_ball_and_beats_fgsm(setup, random_start):
  _, _, logits_fn, images, labels = setup
  eps = 8 / 255
  adv = attacks.pgd(logits_fn, images, labels, epsilon=eps, step_size=2 / 255, steps=10,
                    mean=MEAN, std=STD, random_start=random_start, key=jax.random.PRNGKey(1))
  delta = _to_pixels(adv) - _to_pixels(images)
  assert np.abs(delta).max() <= eps + 1e-6
  pixels = _to_pixels(adv)
  assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
  fgsm = attacks.fgsm(logits_fn, images, labels, epsilon=eps, mean=MEAN, std=STD)
  clean = _loss(logits_fn, images, labels)
  assert _loss(logits_fn, adv, labels) > _loss(logits_fn, fgsm, labels) > clean


def test_one_pgd_step_of_size_eps_is_fgsm(setup):
  _, _, logits_fn, images, labels = setup
  eps = 4 / 255
  pgd = attacks.pgd(logits_fn, images, labels, epsilon=eps, step_size=eps, steps=1, mean=MEAN,
                    std=STD, random_start=False)
  fgsm = attacks.fgsm(logits_fn, images, labels, epsilon=eps, mean=MEAN, std=STD)
  np.testing.assert_allclose(np.asarray(pgd), np.asarray(fgsm), atol=1e-6)


def test_jitted_attack_fns_match_and_compile_once(setup):
  model, variables, logits_fn, images, labels = setup
  fgsm_fn, pgd_fn = attacks.make_attack_fns(model, MEAN, STD, pgd_steps=3, random_start=True)
  key = jax.random.PRNGKey(2)
  for eps in (2 / 255, 8 / 255):  # ε is traced: no recompilation per radius
    np.testing.assert_allclose(
        np.asarray(fgsm_fn(variables, images, labels, eps)),
        np.asarray(attacks.fgsm(logits_fn, images, labels, epsilon=eps, mean=MEAN, std=STD)),
        atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(pgd_fn(variables, images, labels, eps, eps / 2, key)),
        np.asarray(attacks.pgd(logits_fn, images, labels, epsilon=eps, step_size=eps / 2,
                               steps=3, mean=MEAN, std=STD, random_start=True, key=key)),
        atol=1e-5)
  assert fgsm_fn._cache_size() == 1 and pgd_fn._cache_size() == 1


def test_pgd_drops_a_trained_linear_model_well_below_its_clean_accuracy():
  """A linear classifier trained to > 95 % on separable data; PGD at 8/255 breaks it."""
  rng = np.random.default_rng(0)
  n, d = 400, 48
  direction = rng.normal(size=d)
  direction /= np.linalg.norm(direction)
  labels = rng.integers(0, 2, n).astype(np.int32)
  # Pixels in [0, 1]: 0.5 + noise, shifted along `direction` by a small class-dependent margin.
  pixels = 0.5 + 0.05 * rng.normal(size=(n, d)) + np.where(labels, 0.02, -0.02)[:, None] * \
      direction * np.sqrt(d)
  pixels = np.clip(pixels, 0, 1).astype(np.float32).reshape(n, 4, 4, 3)
  images = jnp.asarray((pixels - 0.5) / 0.25)
  w = jnp.zeros((d, 2))

  def logits_fn(x, w=None):
    return x.reshape(x.shape[0], -1) @ w

  def loss(w):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(images, w), labels).mean()

  w = jax.jit(lambda w: jax.lax.fori_loop(0, 200, lambda _, w: w - 0.5 * jax.grad(loss)(w), w))(w)
  acc = lambda x: float((logits_fn(x, w).argmax(-1) == labels).mean())
  assert acc(images) > 0.95
  adv = attacks.pgd(lambda x: logits_fn(x, w), images, jnp.asarray(labels), epsilon=8 / 255,
                    step_size=2 / 255, steps=10, mean=(0.5,) * 3, std=(0.25,) * 3,
                    random_start=True, key=jax.random.PRNGKey(0))
  assert acc(adv) < 0.5


def test_config_errors():
  cfg = attacks.default_config()
  cfg.epsilons = (8.0,)
  with pytest.raises(CSGError, match="0..1"):
    attacks.validate_config(cfg)
  cfg = attacks.default_config()
  cfg.attacks = ("cw",)
  with pytest.raises(CSGError, match="attacks.attacks"):
    attacks.validate_config(cfg)
  with pytest.raises(CSGError, match="PRNG key"):
    attacks.pgd(lambda x: x.reshape(1, -1), jnp.zeros((1, 2, 2, 3)), jnp.zeros(1, jnp.int32),
                epsilon=0.1, step_size=0.1, steps=1, mean=MEAN, std=STD, random_start=True)
