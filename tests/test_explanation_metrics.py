"""Explanation-quality metrics against hand-computed values and independent references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from csg_jax.errors import CSGError
from csg_jax.evaluation import explanation_metrics as em
from csg_jax.evaluation.localization import bilinear_matrix


def _box(h, w, rows, cols):
  m = np.zeros((h, w), bool)
  m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
  return m


def _peak(h, w, *points):
  m = np.zeros((h, w), np.float32)
  for y, x in points:
    m[y, x] = 1.0
  return m


# ---------------------------------------------------------------------------------------------
# Pointing game.
# ---------------------------------------------------------------------------------------------


def test_pointing_game_inside_near_far_and_tolerance_boundary():
  square = _box(32, 32, (10, 14), (10, 14))
  maps = np.stack([_peak(32, 32, (12, 12)),  # inside the mask
                   _peak(32, 32, (12, 20)),  # 6 px right of the mask's edge column 14
                   _peak(32, 32, (12, 31))])  # 17 px away
  masks = np.stack([square] * 3)
  got = {tol: np.asarray(em.pointing_game(maps, masks, tol)) for tol in (15, 7, 6, 0)}
  np.testing.assert_array_equal(got[15], [1, 1, 0])
  np.testing.assert_array_equal(got[7], [1, 1, 0])  # 6² = 36 < 49
  np.testing.assert_array_equal(got[6], [1, 0, 0])  # TorchRay's strict d² < tolerance²
  np.testing.assert_array_equal(got[0], [1, 0, 0])  # tolerance 0: inside the mask only


def test_pointing_game_distance_exactly_tolerance_is_a_miss():
  mask = np.zeros((32, 32), bool)
  mask[5, 5] = True
  peak = _peak(32, 32, (14, 17))  # dy = 9, dx = 12: distance exactly 15
  hits = [float(em.pointing_game(peak[None], mask[None], tol)[0]) for tol in (15, 15.5, 16)]
  assert hits == [0.0, 1.0, 1.0]  # 225 < 225 is false, 225 < 240.25 and < 256 are true


def test_pointing_game_ties_take_the_first_maximum_in_row_major_order():
  square = _box(32, 32, (10, 14), (10, 14))
  # (0, 30) comes first in row-major order; nearest mask pixel (10, 14): d² = 100 + 256.
  first_far = _peak(32, 32, (12, 12), (0, 30))
  first_in = _peak(32, 32, (12, 12), (31, 31))
  got = np.asarray(em.pointing_game(np.stack([first_far, first_in]), np.stack([square] * 2)))
  np.testing.assert_array_equal(got, [0, 1])


def test_pointing_game_constant_map_points_at_the_top_left_pixel():
  near = _box(32, 32, (10, 14), (10, 14))  # (10, 10) is sqrt(200) < 15 from (0, 0)
  far = _box(32, 32, (20, 25), (20, 25))  # sqrt(800) away
  maps = np.full((2, 32, 32), 0.7, np.float32)
  np.testing.assert_array_equal(np.asarray(em.pointing_game(maps, np.stack([near, far]))),
                                [1, 0])


def test_pointing_game_empty_mask_is_nan_and_jits():
  maps = np.stack([_peak(16, 16, (3, 3))] * 2)
  masks = np.stack([_box(16, 16, (2, 4), (2, 4)), np.zeros((16, 16), bool)])
  eager = np.asarray(em.pointing_game(maps, masks))
  jitted = np.asarray(jax.jit(em.pointing_game)(maps, masks, 15))
  assert eager[0] == 1 and np.isnan(eager[1])
  np.testing.assert_array_equal(eager, jitted)
  assert np.nanmean(eager) == 1.0


def test_pointing_game_rejects_bad_inputs():
  with pytest.raises(CSGError, match="same"):
    em.pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))
  with pytest.raises(CSGError, match=">= 0"):
    em.pointing_game(np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool), tolerance=-1)
  with pytest.raises(CSGError, match=r"\[N, H, W\]"):
    em.pointing_game(np.zeros((4, 4)), np.ones((4, 4), bool))


# ---------------------------------------------------------------------------------------------
# Energy-based pointing game and relevance rank accuracy.
# ---------------------------------------------------------------------------------------------


def test_energy_pointing_game_hand_values():
  mixed = np.array([[1, -2, 3], [0, 4, -1]], np.float32)
  mask = np.array([[1, 0, 0], [0, 1, 1]], bool)
  inside_only = np.array([[5, 0, 0], [0, 2, -7]], np.float32)
  non_positive = np.array([[0, -1, -2], [-3, 0, -4]], np.float32)
  maps = np.stack([mixed, inside_only, non_positive, mixed])
  masks = np.stack([mask, mask, mask, np.zeros_like(mask)])
  got = np.asarray(em.energy_pointing_game(maps, masks))
  # Positive mass 1 + 3 + 4 = 8, of which 1 + 4 inside; the negative -1 inside does not count.
  np.testing.assert_allclose(got[:2], [5 / 8, 1.0], rtol=1e-6)
  assert np.isnan(got[2]) and np.isnan(got[3])  # no positive mass; empty mask


def test_relevance_rank_accuracy_hand_values_and_ties():
  ramp = np.array([[9, 8, 7], [6, 5, 4], [3, 2, 1]], np.float32)
  diagonal = np.eye(3, dtype=bool)  # K = 3; the top 3 are row 0: only (0, 0) is inside
  constant = np.full((3, 3), 2.0, np.float32)
  two = np.zeros((3, 3), bool)
  two[0, 1] = two[2, 2] = True  # K = 2: stable ties rank (0, 0), (0, 1) first -> 1/2
  tied = np.array([[1, 5, 5], [5, 0, 0], [0, 0, 0]], np.float32)  # top 1 is (0, 1)
  at_01, at_10 = np.zeros((3, 3), bool), np.zeros((3, 3), bool)
  at_01[0, 1] = at_10[1, 0] = True
  maps = np.stack([ramp, ramp, constant, tied, tied, ramp])
  masks = np.stack([diagonal, ramp >= 7, two, at_01, at_10, np.zeros((3, 3), bool)])
  got = np.asarray(em.relevance_rank_accuracy(maps, masks))
  np.testing.assert_allclose(got[:5], [1 / 3, 1.0, 0.5, 1.0, 0.0], rtol=1e-6)
  assert np.isnan(got[5])


def test_relevance_rank_accuracy_matches_a_loop():
  rng = np.random.default_rng(3)
  maps = rng.integers(0, 6, (8, 7, 9)).astype(np.float32)  # many ties
  masks = rng.random((8, 7, 9)) < 0.3
  got = np.asarray(jax.jit(em.relevance_rank_accuracy)(maps, masks))
  for i in range(8):
    flat, m = maps[i].ravel(), masks[i].ravel()
    top = np.argsort(-flat, kind="stable")[:m.sum()]
    assert got[i] == pytest.approx(m[top].mean(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Deletion and insertion.
# ---------------------------------------------------------------------------------------------


def _sigmoid(z):
  return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def _sum_model(scale=1.0, offset=0.0):
  """probabilities = softmax([scale · Σ pixels + offset, 0]): class 0 has sigmoid(z)."""
  @jax.jit
  def predict(x):
    z = scale * x.reshape(x.shape[0], -1).sum(axis=1) + offset
    return jax.nn.softmax(jnp.stack([z, jnp.zeros_like(z)], axis=1), axis=1)
  return predict


def test_curves_by_hand_on_a_2x2_image():
  image = np.array([[1, 2], [3, 4]], np.float32)[None, :, :, None]
  images = np.concatenate([image, image])
  # Image 0's order: (0,1)=2, (1,0)=3, (1,1)=4, (0,0)=1; image 1 is scored for class 1.
  maps = np.array([[[0.1, 0.4], [0.3, 0.2]], [[0.4, 0.1], [0.2, 0.3]]], np.float32)
  labels = np.array([0, 1])
  predict = _sum_model()
  out = em.deletion_insertion_curves(predict, images, maps, labels, steps=4, baseline=0.0,
                                     batch_size=3)
  np.testing.assert_allclose(out["deletion"][0], _sigmoid([10, 8, 5, 1, 0]), atol=1e-6)
  np.testing.assert_allclose(out["insertion"][0], _sigmoid([0, 2, 5, 9, 10]), atol=1e-6)
  # Image 1's order: (0,0)=1, (1,1)=4, (1,0)=3, (0,1)=2; class 1 has 1 - sigmoid.
  np.testing.assert_allclose(out["deletion"][1], 1 - _sigmoid([10, 9, 5, 2, 0]), atol=1e-6)
  np.testing.assert_allclose(out["insertion"][1], 1 - _sigmoid([0, 1, 5, 8, 10]), atol=1e-6)
  np.testing.assert_allclose(out["fraction"], [0, 0.25, 0.5, 0.75, 1])
  # 3 steps of 4 pixels: ⌊s·4/3⌋ = 0, 1, 2, 4 pixels.
  out3 = em.deletion_insertion_curves(predict, image, maps[:1], labels[:1], steps=3,
                                      baseline=0.0)
  np.testing.assert_allclose(out3["deletion"][0], _sigmoid([10, 8, 5, 0]), atol=1e-6)
  np.testing.assert_allclose(out3["insertion"][0], _sigmoid([0, 2, 5, 10]), atol=1e-6)
  np.testing.assert_allclose(out3["fraction"], [0, 0.25, 0.5, 1])


def test_relevance_ranks_patches_score_by_the_cell_mean():
  m = np.array([[1, 1, 3], [1, 1, 3], [2, 2, 0]], np.float32)
  # Cells of 2: (0,0) mean 1 (sum 4), (0,1) mean 3, (1,0) mean 2 (sum 4), (1,1) mean 0.
  want = np.array([[2, 2, 0], [2, 2, 0], [1, 1, 3]])
  np.testing.assert_array_equal(np.asarray(em.relevance_ranks(m[None], patch=2))[0], want)
  # Ties keep row-major order.
  ranks = np.asarray(em.relevance_ranks(np.zeros((1, 3, 4), np.float32)))[0]
  np.testing.assert_array_equal(ranks, np.arange(12).reshape(3, 4))
  assert em.num_units(3, 3, 2) == 4 and em.num_units(224, 224, 16) == 196


def test_curves_with_patches_by_hand():
  image = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
  m = np.array([[1, 1, 3], [1, 1, 3], [2, 2, 0]], np.float32)[None]
  # Cell order (0,1): 3+6, (1,0): 7+8, (0,0): 1+2+4+5, (1,1): 9 of the total 45.
  out = em.deletion_insertion_curves(_sum_model(0.1, -2.0), image, m, [0], steps=4,
                                     baseline=0.0, patch=2)
  np.testing.assert_allclose(out["deletion"][0], _sigmoid(0.1 * np.array([45, 36, 21, 9, 0]) - 2),
                             atol=1e-6)
  np.testing.assert_allclose(out["insertion"][0],
                             _sigmoid(0.1 * np.array([0, 9, 24, 36, 45]) - 2), atol=1e-6)


def _linear_model(h, w, c, classes=3, seed=0):
  weights = jnp.asarray(np.random.default_rng(seed).normal(size=(h * w * c, classes)) * 0.3,
                        jnp.float32)
  return jax.jit(lambda x: jax.nn.softmax(x.reshape(x.shape[0], -1) @ weights, axis=1))


def test_curves_match_a_loop_and_start_and_end_at_the_image_and_baselines():
  rng = np.random.default_rng(0)
  n, h, w, c, steps = 3, 5, 5, 2, 7  # 25 pixels in 7 steps: unequal chunks
  images = rng.normal(size=(n, h, w, c)).astype(np.float32)
  maps = rng.normal(size=(n, h, w)).astype(np.float32)
  labels = np.array([2, 0, 1])
  colour = np.array([0.5, -0.25], np.float32)  # deletion baseline: one colour
  blurred = np.asarray(em.blurred_baseline(images, 1.0, 3))  # insertion baseline: per image
  predict = _linear_model(h, w, c)
  calls = []

  def counting_predict(x):
    calls.append(x.shape[0])
    return predict(x)

  out = em.deletion_insertion_curves(counting_predict, images, maps, labels, steps=steps,
                                     baseline=colour, insertion_baseline=blurred, batch_size=5)
  assert set(calls) == {5} and len(calls) == -(-2 * n * (steps + 1) // 5)
  p = lambda x: np.asarray(predict(jnp.asarray(x, jnp.float32)))[np.arange(n), labels]
  np.testing.assert_allclose(out["deletion"][:, 0], p(images), atol=1e-6)
  np.testing.assert_allclose(out["deletion"][:, -1], p(np.broadcast_to(colour, images.shape)),
                             atol=1e-6)
  np.testing.assert_allclose(out["insertion"][:, 0], p(blurred), atol=1e-6)
  np.testing.assert_allclose(out["insertion"][:, -1], p(images), atol=1e-6)
  # Every step, rebuilt pixel by pixel.
  for i in range(n):
    order = np.argsort(-maps[i].ravel(), kind="stable")
    for s in range(steps + 1):
      first = np.zeros(h * w, bool)
      first[order[:s * h * w // steps]] = True
      first = first.reshape(h, w, 1)
      deleted = np.where(first, colour, images[i])
      inserted = np.where(first, images[i], blurred[i])
      want = np.asarray(predict(jnp.asarray(np.stack([deleted, inserted]))))[:, labels[i]]
      np.testing.assert_allclose([out["deletion"][i, s], out["insertion"][i, s]], want,
                                 atol=1e-6)
  # The batch size only changes how the work is split.
  again = em.deletion_insertion_curves(predict, images, maps, labels, steps=steps,
                                       baseline=colour, insertion_baseline=blurred,
                                       batch_size=1000)
  np.testing.assert_allclose(again["deletion"], out["deletion"], atol=1e-7)
  np.testing.assert_allclose(again["insertion"], out["insertion"], atol=1e-7)


def test_random_order_is_reproducible_and_a_permutation():
  rng = np.random.default_rng(1)
  n, h, w, c = 2, 6, 6, 1
  images = rng.normal(size=(n, h, w, c)).astype(np.float32)
  maps = np.zeros((n, h, w), np.float32)
  predict = _linear_model(h, w, c, classes=2)
  run = functools.partial(em.deletion_insertion_curves, predict, images, maps, [0, 1], steps=6,
                          baseline=0.0, order="random", patch=2)
  a, b = run(rng=jax.random.key(7)), run(rng=jax.random.key(7))
  other = run(rng=jax.random.key(8))
  np.testing.assert_array_equal(a["deletion"], b["deletion"])
  np.testing.assert_array_equal(a["insertion"], b["insertion"])
  assert not np.allclose(a["deletion"], other["deletion"])
  # The order only moves the middle points: both ends are the image and the baseline.
  np.testing.assert_allclose(a["deletion"][:, [0, -1]], other["deletion"][:, [0, -1]], atol=1e-7)
  ranks = np.asarray(em.random_ranks(jax.random.key(7), n, h, w, patch=2))
  for r in ranks:
    cells = r[::2, ::2]
    np.testing.assert_array_equal(np.sort(cells.ravel()), np.arange(9))
    np.testing.assert_array_equal(r, np.kron(cells, np.ones((2, 2), int)))
  with pytest.raises(CSGError, match="rng"):
    run()


def test_baseline_shapes_and_errors():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, 3, 3, 2)).astype(np.float32)
  maps = rng.normal(size=(2, 3, 3)).astype(np.float32)
  predict = _linear_model(3, 3, 2)
  curves = lambda base, **kw: em.deletion_insertion_curves(predict, images, maps, [0, 1],
                                                           steps=3, baseline=base, **kw)
  colour = np.array([0.3, -0.2], np.float32)
  want = curves(np.broadcast_to(colour, images.shape).copy())
  for base in (colour, np.broadcast_to(colour, (3, 3, 2)), colour[None, None, None]):
    got = curves(base)
    np.testing.assert_allclose(got["deletion"], want["deletion"], atol=1e-7)
    np.testing.assert_allclose(got["insertion"], want["insertion"], atol=1e-7)
  with pytest.raises(CSGError, match="broadcastable"):
    curves(np.zeros(3))
  with pytest.raises(CSGError, match="order"):
    curves(0.0, order="saliency")
  with pytest.raises(CSGError, match="steps"):
    em.deletion_insertion_curves(predict, images, maps, [0, 1], steps=0, baseline=0.0)
  with pytest.raises(CSGError, match="classes"):
    em.deletion_insertion_curves(predict, images, maps, [0, 5], steps=2, baseline=0.0)
  with pytest.raises(CSGError, match="classes"):
    em.deletion_insertion_curves(predict, images, maps, [-1, 0], steps=2, baseline=0.0)
  with pytest.raises(CSGError, match="patch"):
    curves(0.0, patch=0)


def test_blurred_baseline_keeps_constant_images():
  images = np.full((2, 7, 9, 3), 0.25, np.float32)
  out = np.asarray(em.blurred_baseline(images))
  assert out.shape == images.shape
  np.testing.assert_allclose(out, 0.25, atol=1e-6)


def test_auc_of_known_curves():
  np.testing.assert_allclose(em.auc([1.0, 0.5, 0.0]), 0.5)
  np.testing.assert_allclose(em.auc([[0.0, 1.0], [0.3, 0.3]]), [0.5, 0.3])
  # x² at x = 0, 1/4, .., 1: the trapezoid rule gives 1/3 + h²/6 with h = 1/4.
  x = np.linspace(0, 1, 5)
  np.testing.assert_allclose(em.auc(x**2), 1 / 3 + 0.25**2 / 6)
  with pytest.raises(CSGError, match="T >= 2"):
    em.auc([0.5])


# ---------------------------------------------------------------------------------------------
# Sanity-check similarities.
# ---------------------------------------------------------------------------------------------


def _np_average_ranks(x):
  order = np.argsort(x, kind="stable")
  ordered = x[order]
  ranks = np.empty(len(x))
  i = 0
  while i < len(x):
    j = i
    while j + 1 < len(x) and ordered[j + 1] == ordered[i]:
      j += 1
    ranks[order[i:j + 1]] = (i + j) / 2 + 1  # positions i+1 .. j+1, averaged
    i = j + 1
  return ranks


def test_spearman_hand_value_with_ties():
  a = np.array([1, 2, 2, 3], np.float32).reshape(1, 2, 2)
  b = np.array([1, 2, 3, 4], np.float32).reshape(1, 2, 2)
  # Ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): cov 4.5, variances 4.5 and 5.
  np.testing.assert_allclose(em.spearman_rank_correlation(a, b), [np.sqrt(0.9)], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(em.average_ranks(a.reshape(1, -1)))[0],
                                [1, 2.5, 2.5, 4])


def test_spearman_matches_numpy_ranks_and_known_cases():
  rng = np.random.default_rng(4)
  a = rng.integers(0, 5, (4, 6, 7)).astype(np.float32)  # heavy ties
  b = (a + rng.integers(0, 3, a.shape)).astype(np.float32)
  got = np.asarray(jax.jit(em.spearman_rank_correlation)(a, b))
  for i in range(4):
    want = np.corrcoef(_np_average_ranks(a[i].ravel()), _np_average_ranks(b[i].ravel()))[0, 1]
    assert got[i] == pytest.approx(want, abs=1e-6)
  c = rng.normal(size=(2, 8, 8)).astype(np.float32)
  np.testing.assert_allclose(em.spearman_rank_correlation(c, np.exp(c)), [1, 1], atol=1e-6)
  np.testing.assert_allclose(em.spearman_rank_correlation(c, -c), [-1, -1], atol=1e-6)
  flat = em.spearman_rank_correlation(c, np.ones_like(c))
  assert np.isnan(np.asarray(flat)).all()


def _checkerboard(n):
  return (np.add.outer(np.arange(n), np.arange(n)) % 2).astype(np.float32)


def _even_odd_weights():
  t = np.arange(-5, 6)
  g = np.exp(-t**2 / (2 * 1.5**2))
  g /= g.sum()
  return g[t % 2 == 0].sum(), g[t % 2 == 1].sum()


def test_ssim_known_cases():
  rng = np.random.default_rng(5)
  a = rng.random((3, 16, 13)).astype(np.float32)
  np.testing.assert_allclose(em.ssim(a, a), 1.0, atol=1e-6)
  np.testing.assert_allclose(em.ssim(a, 3 * a + 2), 1.0, atol=1e-5)  # min-max normalised
  c1, c2 = 0.01**2, 0.03**2
  # Checkerboard: an interior pixel's Gaussian mean is e² + o² (value 1) or 2eo (value 0),
  # e and o the 1-D weights at even and odd offsets; the variance is v = m (1 - m) = 2eo(e²+o²).
  e, o = _even_odd_weights()
  m1, m0 = e**2 + o**2, 2 * e * o
  v = m1 * m0
  board = _checkerboard(12)[None]
  # Against its negation (normalised: 1 - board): uy = 1 - ux, vxy = -v.
  want_neg = (2 * v + c1) * (c2 - 2 * v) / ((1 - 2 * v + c1) * (2 * v + c2))
  np.testing.assert_allclose(em.ssim(board, -board), [want_neg], rtol=1e-4)
  # Against a constant (normalised to zeros): the 2x2 interior has two pixels of each parity.
  want_flat = np.mean([c1 * c2 / ((m * m + c1) * (v + c2)) for m in (m0, m1)])
  np.testing.assert_allclose(em.ssim(board, np.full_like(board, 4.0)), [want_flat], rtol=1e-4)
  np.testing.assert_allclose(em.ssim(np.zeros((1, 11, 11)), np.ones((1, 11, 11))), [1.0])


def test_ssim_matches_the_skimage_recipe():
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.default_rng(6)
  a = rng.normal(size=(3, 20, 17))
  b = a + rng.normal(size=a.shape)
  b[2] = -a[2]

  def reference(x, y):  # skimage.metrics.structural_similarity(gaussian_weights=True, ...)
    x, y = ((z - z.min()) / (z.max() - z.min()) for z in (x, y))
    f = lambda z: ndimage.gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")
    ux, uy = f(x), f(y)
    vx, vy, vxy = f(x * x) - ux * ux, f(y * y) - uy * uy, f(x * y) - ux * uy
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s[5:-5, 5:-5].mean()

  got = np.asarray(jax.jit(em.ssim)(a, b))
  np.testing.assert_allclose(got, [reference(a[i], b[i]) for i in range(3)], atol=1e-5)


def test_ssim_rejects_small_maps():
  with pytest.raises(CSGError, match="11x11"):
    em.ssim(np.zeros((1, 10, 20)), np.zeros((1, 10, 20)))


# ---------------------------------------------------------------------------------------------
# Network Dissection.
# ---------------------------------------------------------------------------------------------


def test_filter_thresholds_are_the_higher_order_statistic():
  rng = np.random.default_rng(7)
  acts = rng.random((6, 5, 7, 3)).astype(np.float32)  # M = 210 values per filter
  for q in (0.995, 0.9):
    got = em.filter_thresholds(acts, q)
    position = int(np.ceil(q * 209))  # 207.955 -> 208; 188.1 -> 189
    want = np.sort(acts.reshape(-1, 3), axis=0)[position]
    np.testing.assert_array_equal(got, want)
  # 1000 distinct values: exactly the top 0.5 % (5 values) are >= the threshold.
  big = rng.random((10, 10, 10, 2)).astype(np.float32)
  t = em.filter_thresholds(big)
  np.testing.assert_array_equal((big >= t).sum(axis=(0, 1, 2)), [5, 5])
  with pytest.raises(CSGError, match="quantile"):
    em.filter_thresholds(acts, 1.5)


def _dissection_data(seed, b=5, k=6, num_classes=4):
  rng = np.random.default_rng(seed)
  # Quarter-integers upsampled 4 -> 8 (weights 1/4, 3/4) are exact in float32 and float64.
  acts = (rng.integers(0, 13, (b, 4, 4, k)) / 4).astype(np.float32)
  masks = rng.random((b, 8, 8)) < 0.4
  labels = rng.integers(0, num_classes - 1, b)  # the last class never occurs
  return acts, masks, labels


def _brute_force_counts(acts, thresholds, masks, labels, num_classes):
  b, h, w, k = acts.shape
  uh = bilinear_matrix(masks.shape[1], h).astype(np.float64)
  uw = bilinear_matrix(masks.shape[2], w).astype(np.float64)
  inter = np.zeros((k, num_classes), int)
  union = np.zeros((k, num_classes), int)
  for f in range(k):
    for c in range(num_classes):
      for i in range(b):
        on = uh @ acts[i, :, :, f].astype(np.float64) @ uw.T >= thresholds[f]
        target = masks[i] if labels[i] == c else np.zeros_like(masks[i])
        inter[f, c] += (on & target).sum()
        union[f, c] += (on | target).sum()
  return inter, union


def test_dissection_counts_match_a_brute_force_loop():
  acts, masks, labels = _dissection_data(8)
  thresholds = em.filter_thresholds(acts, 0.8)
  inter, union = em.dissection_counts(acts, thresholds, masks, labels, 4, filter_chunk=4)
  want_inter, want_union = _brute_force_counts(acts, thresholds, masks, labels, 4)
  np.testing.assert_array_equal(np.asarray(inter), want_inter)
  np.testing.assert_array_equal(np.asarray(union), want_union)
  assert want_inter[:, 3].sum() == 0 and want_union[:, 3].min() > 0  # the absent class
  iou = em.dissection_iou(inter, union)
  np.testing.assert_allclose(iou, want_inter / want_union)


def test_dissection_counts_stream_over_batches_and_skip_padding():
  acts, masks, labels = _dissection_data(9, b=6)
  thresholds = em.filter_thresholds(acts)
  whole = em.dissection_counts(acts, thresholds, masks, labels, 4)
  halves = [em.dissection_counts(acts[s], thresholds, masks[s], labels[s], 4)
            for s in (slice(0, 2), slice(2, 6))]
  for j in range(2):
    np.testing.assert_array_equal(np.asarray(halves[0][j], np.int64) + halves[1][j], whole[j])
  # Padding rows (garbage masks and labels) are ignored where valid is False.
  pad = 3
  padded = em.dissection_counts(
      np.concatenate([acts, np.full((pad,) + acts.shape[1:], 9.0, np.float32)]), thresholds,
      np.concatenate([masks, np.ones((pad,) + masks.shape[1:], bool)]),
      np.concatenate([labels, [1] * pad]), 4, valid=np.arange(6 + pad) < 6, filter_chunk=1)
  for j in range(2):
    np.testing.assert_array_equal(padded[j], whole[j])


def test_dissection_iou_hand_values_and_errors():
  got = em.dissection_iou([[1, 0], [2, 0]], [[4, 0], [8, 5]])
  np.testing.assert_allclose(got, [[0.25, 0.0], [0.25, 0.0]])
  with pytest.raises(CSGError, match="differ"):
    em.dissection_iou(np.zeros((2, 3)), np.zeros((3, 2)))
  acts, masks, labels = _dissection_data(10)
  with pytest.raises(CSGError, match="thresholds"):
    em.dissection_counts(acts, np.zeros(2), masks, labels, 4)


def test_detectors_threshold_edges():
  iou = np.array([[0.04, 0.01],  # exactly 0.04: not > 0.04
                  [0.01, 0.0400001],
                  [0.3, 0.3],  # tie: the first class
                  [0.0, 0.0],
                  [0.05, 0.2]])
  got = em.detectors(iou)
  np.testing.assert_array_equal(got["best_class"], [0, 1, 0, 0, 1])
  np.testing.assert_allclose(got["best_iou"], [0.04, 0.0400001, 0.3, 0.0, 0.2])
  np.testing.assert_array_equal(got["is_detector"], [False, True, True, False, True])
  assert got["num_detectors"] == 3 and got["num_unique_classes"] == 2
  strict = em.detectors(iou, threshold=0.3)  # 0.3 is not > 0.3
  assert strict["num_detectors"] == 0 and strict["num_unique_classes"] == 0
  loose = em.detectors(iou, threshold=0.0)
  assert loose["num_detectors"] == 4 and loose["num_unique_classes"] == 2
