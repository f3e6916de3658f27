"""FGSM and PGD: inside the ε ball and the valid pixel box, loss goes up, PGD(1 step) = FGSM."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from csg_jax.evaluation import attacks
from csg_jax import models
from csg_jax.errors import CSGError

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def setup():
  model = models.Classifier(models.TinyCNN(width=4), 4, 8)
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


def test_jitted_attack_fns_match_the_plain_attacks(setup):
  model, variables, logits_fn, images, labels = setup
  fgsm_fn, pgd_fn = attacks.make_attack_fns(model, MEAN, STD, pgd_steps=3, random_start=True)
  key = jax.random.PRNGKey(2)
  for eps in (2 / 255, 8 / 255):  # one trace per fn: tests/test_std_path.py
    np.testing.assert_allclose(
        np.asarray(fgsm_fn(variables, images, labels, eps)),
        np.asarray(attacks.fgsm(logits_fn, images, labels, epsilon=eps, mean=MEAN, std=STD)),
        atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(pgd_fn(variables, images, labels, eps, eps / 2, key)),
        np.asarray(attacks.pgd(logits_fn, images, labels, epsilon=eps, step_size=eps / 2,
                               steps=3, mean=MEAN, std=STD, random_start=True, key=key)),
        atol=1e-5)


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
  cfg.epsilons = ()
  with pytest.raises(CSGError, match="attacks.epsilons"):
    attacks.validate_config(cfg)
  cfg = attacks.default_config()
  cfg.attacks = ("cw",)
  with pytest.raises(CSGError, match="attacks.attacks"):
    attacks.validate_config(cfg)
  with pytest.raises(CSGError, match="PRNG key"):
    attacks.pgd(lambda x: x.reshape(1, -1), jnp.zeros((1, 2, 2, 3)), jnp.zeros(1, jnp.int32),
                epsilon=0.1, step_size=0.1, steps=1, mean=MEAN, std=STD, random_start=True)


def _np_linear_grad_sign(x, y, w):
  """sign of the input gradient of the summed CE of logits = flatten(x) @ w (closed form)."""
  flat = x.reshape(len(x), -1).astype(np.float64)
  logits = flat @ w
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.sign(((p - np.eye(w.shape[1])[y]) @ w.T).reshape(x.shape))


def _np_linear_pgd(x, y, w, eps, step, steps, mean, std):
  """PGD-L∞ from x (no random start) on the linear model; FGSM is one step of size ε."""
  std = np.asarray(std, np.float64)
  radius, alpha = eps / std, step / std
  low, high = (0.0 - np.asarray(mean)) / std, (1.0 - np.asarray(mean)) / std
  adv = x.astype(np.float64)
  for _ in range(steps):
    adv = adv + alpha * _np_linear_grad_sign(adv, y, w)
    adv = np.clip(np.clip(adv, x - radius, x + radius), low, high)
  return adv


class AttackStepTest(chex.TestCase):
  """Attack steps on a linear model, against numpy; with and without jit, device or numpy input."""

  def _linear_problem(self):
    rng = np.random.default_rng(3)
    pixels = rng.random((8, 3, 3, 3)).astype(np.float32)
    pixels[0] = 0.0  # on the box's corner
    images = ((pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32))
    labels = (np.arange(8) % 4).astype(np.int32)
    w = rng.normal(size=(27, 4)).astype(np.float32)
    w[:5] = 0.0  # pixels the logits ignore: zero gradient, an attack must leave them alone
    logits_fn = lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w)
    return images, labels, w, logits_fn

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_fgsm_equals_closed_form(self):
    images, labels, w, logits_fn = self._linear_problem()
    fgsm = self.variant(lambda x, y: attacks.fgsm(logits_fn, x, y, epsilon=8 / 255, mean=MEAN,
                                                  std=STD))
    got = np.asarray(fgsm(images, labels))
    chex.assert_shape(got, images.shape)
    want = _np_linear_pgd(images, labels, w, 8 / 255, 8 / 255, 1, MEAN, STD)
    np.testing.assert_allclose(got, want, atol=1e-5)
    flat = (got - images).reshape(len(images), -1)
    np.testing.assert_array_equal(flat[:, :5], 0.0)  # untouched where the gradient is 0
    assert (np.abs(flat[:, 5:]) > 0).mean() > 0.5

  @chex.variants(with_jit=True, without_jit=True)
  def test_pgd_without_random_start_equals_closed_form(self):
    images, labels, w, logits_fn = self._linear_problem()
    pgd = self.variant(lambda x, y: attacks.pgd(logits_fn, x, y, epsilon=8 / 255,
                                                step_size=3 / 255, steps=4, mean=MEAN, std=STD,
                                                random_start=False))
    got = np.asarray(pgd(images, labels))
    np.testing.assert_allclose(got, _np_linear_pgd(images, labels, w, 8 / 255, 3 / 255, 4, MEAN,
                                                   STD), atol=1e-5)
    np.testing.assert_array_equal((got - images).reshape(len(images), -1)[:, :5], 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_pgd_random_start_is_uniform_in_the_ball(self):
    """With zero steps PGD returns its start: x + U(-ε, ε) per pixel, then the box."""
    rng = np.random.default_rng(4)
    pixels = rng.uniform(0.2, 0.8, size=(64, 4, 4, 3)).astype(np.float32)  # far from the box
    images = (pixels - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    labels = np.zeros(64, np.int32)
    eps = 8 / 255
    start = self.variant(lambda x, y, key: attacks.pgd(
        lambda v: v.reshape(v.shape[0], -1)[:, :2], x, y, epsilon=eps, step_size=eps, steps=0,
        mean=MEAN, std=STD, random_start=True, key=key))
    offset = (_to_pixels(start(images, labels, jax.random.PRNGKey(5))) -
              _to_pixels(images)) / eps  # in units of ε: uniform on [-1, 1]
    assert np.abs(offset).max() <= 1 + 1e-4
    assert offset.min() < -0.95 and offset.max() > 0.95
    assert abs(offset.mean()) < 0.03  # mean of 3072 U(-1, 1) draws: sd 0.01
    assert abs((offset < 0).mean() - 0.5) < 0.04
    assert 0.30 < np.var(offset) < 0.37  # U(-1, 1) has variance 1/3


def test_default_protocol_is_the_documented_one():
  """docs/applications.md: ε of 4, 8 and 16 / 255 (its tables), 10 PGD steps of 2.5·ε/steps
  from a uniform random start; changing a default changes every reported number."""
  cfg = attacks.default_config()
  attacks.validate_config(cfg)
  assert tuple(cfg.attacks) == ("fgsm", "pgd")
  np.testing.assert_allclose(cfg.epsilons, np.array([4, 8, 16]) / 255, rtol=1e-12)
  assert cfg.pgd_steps == 10 and cfg.pgd_random_start is True
  assert attacks.pgd_step_size(cfg, 8 / 255) == pytest.approx(2.5 * (8 / 255) / 10)
  cfg.pgd_step_size = 0.01
  assert attacks.pgd_step_size(cfg, 8 / 255) == 0.01  # an explicit step wins


@pytest.mark.parametrize("field,good,bad", [
    ("epsilons", (1.0,), (0.0,)), ("epsilons", (1e-4,), (1.0001,)), ("pgd_steps", 1, 0),
    ("pgd_step_size", 0.0, -1e-4), ("batch_size", 1, 0)])
def test_config_boundaries(field, good, bad):
  """Each bound of validate_config, on both sides."""
  cfg = attacks.default_config()
  cfg[field] = good
  attacks.validate_config(cfg)
  cfg[field] = bad
  with pytest.raises(CSGError, match=f"attacks.{field}"):
    attacks.validate_config(cfg)
