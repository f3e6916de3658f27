"""The MIS metric: parity with sklearn (ties, tiny classes), known answers, helpers, errors.

Most tests share one input shape (N_SAMPLES x N_FILTERS, N_CLASSES) so the device kernel
compiles once; the few that need another kernel say so.
"""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from sklearn.feature_selection import _mutual_info as sk_mutual_info
from sklearn.feature_selection import mutual_info_classif

from csg_jax.evaluation import mi_estimator
from csg_jax.evaluation import mis as mis_lib
from csg_jax.errors import CSGError

N_SAMPLES, N_FILTERS, N_CLASSES = 320, 8, 4
# Parity target: sklearn runs the same float64 arithmetic, so agreement is at rounding level.
ATOL = 1e-9


def sklearn_matrix(features, labels, num_classes, seed=0, n_neighbors=3):
  return np.stack([
      mutual_info_classif(features, labels == c, n_neighbors=n_neighbors, random_state=seed)
      for c in range(num_classes)
  ])


def assert_parity(features, labels, num_classes=N_CLASSES, seed=0, **kwargs):
  got = mis_lib.mutual_information_matrix(features, labels, num_classes, seed=seed, **kwargs)
  want = sklearn_matrix(features, labels, num_classes, seed,
                        n_neighbors=kwargs.get("n_neighbors", 3))
  assert got.shape == (num_classes, np.shape(features)[1])
  assert got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  return got


def class_dependent(rng, labels, scale=0.7):
  """Gaussian features whose mean depends on the class, so the MI is not trivially zero."""
  shift = rng.normal(0.0, scale, size=(N_CLASSES, N_FILTERS))
  return shift[labels] + rng.normal(size=(len(labels), N_FILTERS))


@pytest.mark.parametrize("seed", range(4))
def test_parity_gaussian(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, N_CLASSES, N_SAMPLES)
  got = assert_parity(class_dependent(rng, labels), labels, seed=seed)
  assert got.max() > 0.02  # the check is not vacuous


def test_parity_relu_features_with_many_zeros():
  rng = np.random.default_rng(10)
  labels = rng.integers(0, N_CLASSES, N_SAMPLES)
  features = np.maximum(0.0, class_dependent(rng, labels)).astype(np.float32)
  assert 0.3 < np.mean(features == 0) < 0.7
  assert_parity(features, labels)


def test_parity_integer_features():
  rng = np.random.default_rng(11)
  labels = rng.integers(0, N_CLASSES, N_SAMPLES)
  features = rng.integers(0, 4, size=(N_SAMPLES, N_FILTERS)) + (labels[:, None] == 1)
  features[:, 0] = 0  # a constant (dead) filter
  assert_parity(features, labels)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8])
def test_parity_small_classes(size):
  # A class with one sample is dropped by sklearn; up to 7 samples its neighbours are found by
  # brute force, whose distances differ in the last bits from |x_i - x_j|.
  rng = np.random.default_rng(20 + size)
  labels = rng.integers(0, N_CLASSES - 1, N_SAMPLES)
  labels[rng.choice(N_SAMPLES, size, replace=False)] = N_CLASSES - 1
  features = np.maximum(0.0, class_dependent(rng, labels))
  features[:, 1] = np.round(features[:, 1])  # ties as well
  assert_parity(features, labels)


def test_parity_absent_and_dominant_classes():
  # Class 3 is absent; class 0 leaves fewer than 2k + 2 other samples (direct path).
  rng = np.random.default_rng(30)
  labels = np.zeros(N_SAMPLES, int)
  labels[[5, 17, 40]] = 1
  labels[[60, 61, 62]] = 2
  assert_parity(np.maximum(0.0, class_dependent(rng, labels)), labels)


def test_parity_clustered_classes_long_runs(monkeypatch):
  # Class-separated features make long runs of one class in sorted order. With no window
  # beyond k and tiny buffers, every correction takes the exact path, in many batches; an
  # odd chunk size also exercises padding of the last chunk. (Compiles a second kernel.)
  monkeypatch.setattr(mi_estimator, "_WINDOW_EXTRA", 0)
  monkeypatch.setattr(mi_estimator, "_OVERFLOW_CAP_MIN", 5)
  monkeypatch.setattr(mi_estimator, "_OVERFLOW_CAP_FRACTION", 10**9)
  rng = np.random.default_rng(40)
  labels = np.repeat(np.arange(N_CLASSES), N_SAMPLES // N_CLASSES)
  labels[:3] = N_CLASSES - 1  # a few strays inside another class's run
  spread = np.array([0.05, 0.3, 1.0, 3.0, 10.0, 0.0, 1.0, 0.1])
  features = labels[:, None] * 2.0 + rng.normal(size=(N_SAMPLES, N_FILTERS)) * spread
  features[:, 6] = np.maximum(0.0, features[:, 6] - 3.0)
  got = assert_parity(features, labels, chunk_size=3)
  assert got.max() > 0.5


def test_parity_other_n_neighbors():
  # Compiles a kernel for k = 5 (brute force then covers classes of up to 11 samples).
  rng = np.random.default_rng(50)
  labels = rng.integers(0, N_CLASSES - 1, N_SAMPLES)
  labels[:9] = N_CLASSES - 1
  assert_parity(np.maximum(0.0, class_dependent(rng, labels)), labels, n_neighbors=5)


def test_known_answer_class_indicator():
  # A filter that is exactly the indicator of class 2: each group is a tight cluster (only the
  # 1e-10 noise separates its points), so every m_i equals k_i and sklearn's estimate reduces
  # to psi(N) - sum_l n_l psi(n_l) / N, which is the label entropy up to O(1/N).
  rng = np.random.default_rng(60)
  labels = rng.integers(0, N_CLASSES, N_SAMPLES)
  features = rng.normal(size=(N_SAMPLES, N_FILTERS))
  features[:, 0] = labels == 2
  features[:, 1] = 5.0 * (labels == 2) - 1.0
  got = assert_parity(features, labels)
  n1 = np.sum(labels == 2)
  n0 = N_SAMPLES - n1
  closed_form = special.digamma(N_SAMPLES) - (
      n1 * special.digamma(n1) + n0 * special.digamma(n0)) / N_SAMPLES
  p = n1 / N_SAMPLES
  entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
  np.testing.assert_allclose(got[2, :2], closed_form, rtol=0, atol=1e-12)
  assert abs(got[2, 0] - entropy) < 1.0 / N_SAMPLES
  # It is the most informative filter for class 2 and assigned to it.
  assert mis_lib.assigned_class_from_mi(got)[0] == 2


def parity_without_noise(monkeypatch, features, labels):
  """Compares with sklearn's estimator on the given values, sklearn's noise left out."""
  monkeypatch.setattr(mi_estimator, "_sklearn_scaled_noisy", lambda x, seed: x.astype(np.float64))
  got = mis_lib.mutual_information_matrix(features, labels, N_CLASSES)
  want = np.array([[sk_mutual_info._compute_mi_cd(features[:, j], labels == c, 3)
                    for j in range(features.shape[1])] for c in range(N_CLASSES)])
  np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
  return got


def test_repeated_values_follow_sklearn_tie_rules(monkeypatch):
  # sklearn's noise makes repeated values practically impossible; without it, exact ties go to
  # the direct implementation, which must follow sklearn's rules (radius 0 counts duplicates).
  rng = np.random.default_rng(70)
  labels = rng.integers(0, N_CLASSES, N_SAMPLES)
  features = class_dependent(rng, labels, scale=2.0)
  for j in range(N_FILTERS - 1):  # in all but the last filter, a few values repeat 2-9 times
    for copies in range(2, 10):
      idx = rng.choice(N_SAMPLES, copies, replace=False)
      features[idx, j] = features[idx[0], j]
  got = parity_without_noise(monkeypatch, features, labels)
  assert got.max() > 0.05


def test_equidistant_values_follow_sklearn_tie_rules(monkeypatch):
  # Distinct values on a grid: left and right neighbours are often exactly equally far, and
  # sklearn's strict radius then counts fewer points. One class has a single sample.
  rng = np.random.default_rng(71)
  labels = rng.integers(0, N_CLASSES - 1, N_SAMPLES)
  labels[7] = N_CLASSES - 1
  features = np.stack([rng.permutation(N_SAMPLES) * 0.25 for _ in range(N_FILTERS)], 1)
  features[:, :4] += 1000.0 * labels[:, None]  # class-separated (and long runs)
  got = parity_without_noise(monkeypatch, features, labels)
  assert got[N_CLASSES - 1].max() > 0  # the single-sample class is not clipped away


@pytest.mark.parametrize("order, dtype", [("C", np.float32), ("F", np.float64)])
def test_noise_matches_sklearn_bit_for_bit(monkeypatch, order, dtype):
  rng = np.random.default_rng(80)
  labels = rng.integers(0, 2, 3000)
  features = np.asarray(np.maximum(0.0, rng.normal(size=(3000, 5))), dtype=dtype, order=order)
  features[:, 3] = 0.0  # a constant column is not scaled
  seen = []
  original = sk_mutual_info._compute_mi
  monkeypatch.setattr(sk_mutual_info, "_compute_mi",
                      lambda x, *args, **kw: seen.append(np.array(x)) or original(x, *args, **kw))
  mutual_info_classif(features, labels == 1, n_neighbors=3, random_state=7)
  np.testing.assert_array_equal(mi_estimator._sklearn_scaled_noisy(features, 7), np.stack(seen, 1))


def test_mis_of_hand_made_matrix():
  mi = np.array([[0.1, 0.5, 0.0],
                 [0.3, 0.2, 0.0]])
  assert mis_lib.mis(mi) == pytest.approx((0.3 + 0.5 + 0.0) / 3)


def test_assigned_class_and_filters_per_class():
  gates = np.array([[0.9, 0.1, 0.5, 0.0],
                    [0.2, 0.8, 0.5, 0.0],
                    [0.0, 0.0, 0.1, 0.3]])
  assigned = mis_lib.assigned_class_from_gate(gates)
  np.testing.assert_array_equal(assigned, [0, 1, 0, 2])  # ties go to the lower class
  np.testing.assert_array_equal(mis_lib.assigned_class_from_mi(gates), assigned)
  np.testing.assert_array_equal(mis_lib.filters_per_class(assigned, 4), [2, 1, 1, 0])


@pytest.mark.parametrize("call, message", [
    (lambda: mis_lib.mutual_information_matrix(np.zeros(10), np.zeros(10, int), 2),
     "features must be"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.zeros((10, 1), int), 2),
     "labels must be"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.zeros(9, int), 2),
     "10 samples but labels has 9"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.full(10, 2), 2),
     r"labels must be in \[0, 2\)"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), -np.ones(10, int), 2),
     r"labels must be in \[0, 2\)"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.zeros(10), 2),
     "labels must be integers"),
    (lambda: mis_lib.mutual_information_matrix(np.full((10, 2), np.nan), np.zeros(10, int), 2),
     "NaN/inf"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((2, 2)), np.zeros(2, int), 2),
     "at least 3 samples"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.zeros(10, int), 0),
     "num_classes"),
    (lambda: mis_lib.mutual_information_matrix(np.zeros((10, 2)), np.zeros(10, int), 2,
                                               n_neighbors=0), "n_neighbors"),
    (lambda: mis_lib.mis(np.zeros(3)), "num_classes, num_filters"),
    (lambda: mis_lib.assigned_class_from_gate(np.zeros(3)), "gates must be"),
    (lambda: mis_lib.filters_per_class(np.array([0, 3]), 3), r"in \[0, 3\)"),
])
def test_errors_are_clear(call, message):
  with pytest.raises(CSGError, match=message):
    call()


class EstimatorKernelTest(chex.TestCase):
  """Device kernels of the estimator against numpy, with and without jit and device inputs."""

  @chex.variants(with_jit=True, without_jit=True, with_device=True, without_device=True)
  def test_kth_of_two_sorted_equals_sorting_the_union(self):
    rng = np.random.default_rng(0)
    for k in (1, 2, 3, 4):
      a = np.sort(rng.normal(size=(k, 6)), axis=0).astype(np.float32)
      b = np.sort(rng.normal(size=(k, 6)), axis=0).astype(np.float32)
      a[-1, 0] = b[-1, 1] = np.inf  # missing neighbours are inf
      kth = self.variant(lambda a, b, k=k: mi_estimator._kth_of_two_sorted(a, b, k))
      want = np.sort(np.concatenate([a, b]), axis=0)[k - 1]
      np.testing.assert_array_equal(np.asarray(kth(a, b)), want)

  @chex.variants(with_jit=True, without_jit=True)
  def test_first_true_equals_searchsorted(self):
    rng = np.random.default_rng(1)
    values = np.sort(rng.normal(size=37))
    thresholds = np.concatenate([rng.normal(size=9), [-9.0, 9.0, values[5]]])

    def search(v, t):
      v = jnp.asarray(v)
      return mi_estimator._first_true(
          [(lambda i: v[jnp.minimum(i, len(values) - 1)] >= t, jnp.zeros_like(t, jnp.int32),
            jnp.full(t.shape, len(values), jnp.int32))], iters=6)[0]

    got = np.asarray(self.variant(search)(values, thresholds))
    np.testing.assert_array_equal(got, np.searchsorted(values, thresholds, side="left"))
