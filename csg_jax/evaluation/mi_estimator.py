"""The mutual-information estimator behind MIS: sklearn's kNN estimator, exactly, for all classes.

`mutual_information_matrix` reproduces, for every class c, exactly what
`sklearn.feature_selection.mutual_info_classif(features, labels == c, n_neighbors=3,
random_state=seed)` returns (docs/csg-method.md §5.1), but for all classes at once:

1. Pre-processing on the host, with the very numpy operations sklearn uses: each column is
   divided by its standard deviation (ddof 0, no centring) and noise
   `1e-10 * max(1, mean|x_j|) * N(0, 1)` is added from `RandomState(seed)` drawn as one
   [N, K] block. sklearn re-seeds for every class, so the noise is the same for every class.
2. Ross's kNN estimator (sklearn's `_compute_mi_cd`) for the binary label `y == c`:
     mi = psi(n) + <psi(k_i)> - <psi(n_label(i))> - <psi(m_i)>,  clipped at 0,
   where k_i = min(n_neighbors, n_label - 1), r_i is the distance to the k_i-th neighbour of
   the same binary label, m_i counts all kept points j with |x_j - x_i| <= nextafter(r_i, 0)
   (itself included) and points whose binary label occurs once are dropped.

Features are 1-D, so everything reduces to sorting (numpy, on the host: one argsort per filter
plus a radix sort of the labels; shared by all classes). Then, per filter, on the device:
  * "y == c" points of class c need their kNN radius within class c: the label sort lists
    every class's members in value order, so it is a window over neighbours; the count m_i
    over all points is a binary search in the value-sorted filter.
  * "y != c" points need the k-th nearest point not of class c. That is the plain kNN radius
    over all points, unless class c is among the point's k nearest neighbours; so only the (at
    most k) classes among those neighbours need a correction, found in a small window of
    neighbours on each side. Where long runs of class c overflow the window, an exact
    gather-based path skips whole runs of class c in sorted order.
  The work per filter is O(N log N), independent of the number of classes.

Distances are float64 differences, exactly as sklearn's KD-tree computes them (sqrt(d*d) == |d|
in IEEE arithmetic). Two sklearn details that matter for bit-level parity:
  * A label group with `n_neighbors >= count // 2` points (count <= 7 for k = 3) is searched by
    brute force, whose distances are sqrt(max(0, (x_i^2 - 2 x_i x_j) + x_j^2)), not |x_i - x_j|.
    Those radii are computed on the host with the same formula.
  * The radius is shrunk with `nextafter(r, 0)` and counted with `<=`: a strict `<` for r > 0,
    but for r == 0 (duplicates) points at distance 0 are counted.
Classes that leave fewer than 2 * n_neighbors + 2 other samples, and filters with exactly
repeated values (sklearn's noise makes them practically impossible), are corner cases that go
to a direct (slower) numpy implementation of the same estimator.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from csg_jax.errors import CSGError

# Target number of (filter, sample) cells per device call. On accelerators it bounds the peak
# memory (about 400 bytes per cell: 1.6 GB at 2**22) while amortising dispatch; on CPU one
# filter per call keeps the working set in cache and was fastest.
_CPU_CELLS_PER_CHUNK = 2**14
_ACCEL_CELLS_PER_CHUNK = 2**22
# Columns sorted per numpy call (host side).
_HOST_COLUMNS_PER_SORT = 16
# Neighbour window beyond n_neighbors searched without gathers; (point, class) pairs whose
# window holds too few points of other classes take the exact gather path, compacted into
# buffers of max(_OVERFLOW_CAP_MIN, cells / _OVERFLOW_CAP_FRACTION).
_WINDOW_EXTRA = 3
_OVERFLOW_CAP_MIN = 256
_OVERFLOW_CAP_FRACTION = 8


# ---------------------------------------------------------------------------------------------
# The estimator.
# ---------------------------------------------------------------------------------------------


def mutual_information_matrix(
    features,
    labels,
    num_classes: int,
    *,
    n_neighbors: int = 3,
    seed: int = 0,
    chunk_size: int | None = None,
) -> np.ndarray:
  """M[c, k] = MI (nats) between feature k and the binary label `labels == c`.

  Args:
    features: [N, K] real features (e.g. GAP of the last conv layer), finite.
    labels: [N] integer class labels in [0, num_classes).
    num_classes: C.
    n_neighbors: k of the kNN estimator (sklearn's `n_neighbors`).
    seed: the `random_state` sklearn would be given; fixes the tie-breaking noise.
    chunk_size: filters per device call; None picks one that bounds memory.

  Returns:
    [C, K] float64 numpy array equal (to ~1e-12) to
    `[mutual_info_classif(features, labels == c, n_neighbors=n_neighbors, random_state=seed)
    for c in range(C)]`.
  """
  x, y = _check_mi_inputs(features, labels, num_classes, n_neighbors, seed, chunk_size)
  n, k_filters = x.shape
  xn = _sklearn_scaled_noisy(x, seed)
  del x
  counts = np.bincount(y, minlength=num_classes).astype(np.int64)
  # Classes whose "other" group is small enough that sklearn brute-forces it (or caps k below
  # n_neighbors) are not covered by the fast path's shared neighbour structure.
  fast = (n - counts) >= 2 * n_neighbors + 2
  mi = np.zeros((num_classes, k_filters), np.float64)
  if fast.any():
    sum_psi_m, repeated = _fast_sum_psi_m(xn, y, counts, fast, n_neighbors, chunk_size)
    for c in np.flatnonzero(fast):
      mi[c] = _assemble_mi(n, int(counts[c]), n_neighbors, sum_psi_m[c])
    # Filters with exactly repeated values (never seen after sklearn's noise in practice)
    # need the tie rules of the direct implementation.
    cols = np.flatnonzero(repeated)
    if cols.size:
      for c in np.flatnonzero(fast):
        mi[c, cols] = _reference_mi_cd(xn[:, cols], y == c, n_neighbors)
  for c in np.flatnonzero(~fast):
    mi[c] = _reference_mi_cd(xn, y == c, n_neighbors)
  return mi


# ---------------------------------------------------------------------------------------------
# Input checks.
# ---------------------------------------------------------------------------------------------


def check_num_classes(num_classes) -> None:
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 1):
    raise CSGError(f"num_classes must be a positive int, got {num_classes!r}.")


def _check_mi_inputs(features, labels, num_classes, n_neighbors, seed, chunk_size):
  """Returns (features [N, K] as a numpy array, labels [N] int64) or raises CSGError."""
  check_num_classes(num_classes)
  if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or (
      n_neighbors < 1):
    raise CSGError(f"n_neighbors must be an int >= 1, got {n_neighbors!r}.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
      0 <= seed < 2**32):
    raise CSGError(f"seed must be an int in [0, 2**32), got {seed!r}.")
  if chunk_size is not None and (isinstance(chunk_size, bool) or
                                 not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
    raise CSGError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}.")
  x = np.asarray(features)
  y = np.asarray(labels)
  if x.ndim != 2:
    raise CSGError(f"features must be [num_samples, num_filters], got shape {x.shape}.")
  if y.ndim != 1:
    raise CSGError(f"labels must be [num_samples], got shape {y.shape}.")
  if x.shape[0] != y.shape[0]:
    raise CSGError(f"features has {x.shape[0]} samples but labels has {y.shape[0]}; they must "
                   "describe the same samples.")
  if x.shape[0] < 3:
    raise CSGError(f"mutual information needs at least 3 samples, got {x.shape[0]}.")
  if x.shape[1] < 1:
    raise CSGError("features has no filters (shape [N, 0]).")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or
          x.dtype == np.bool_):
    raise CSGError(f"features must be real numbers, got dtype {x.dtype}.")
  if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise CSGError(f"features contain {bad} NaN/inf values; fix the feature extraction (e.g. "
                   "a diverged model) before computing mutual information.")
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
    raise CSGError(f"labels must be integers, got dtype {y.dtype}.")
  y = y.astype(np.int64)
  if y.min() < 0 or y.max() >= num_classes:
    raise CSGError(f"labels must be in [0, {num_classes}) (num_classes={num_classes}), got "
                   f"values in [{y.min()}, {y.max()}].")
  return x, y


# ---------------------------------------------------------------------------------------------
# sklearn's pre-processing, bit for bit.
# ---------------------------------------------------------------------------------------------


def _sklearn_scaled_noisy(x: np.ndarray, seed: int) -> np.ndarray:
  """What `_estimate_mi` hands to `_compute_mi_cd`, column by column, as one [N, K] array.

  Reductions round according to memory layout, so they run, as in sklearn, on the copy that
  `X[:, mask]` makes. The result has that copy's layout; its values are sklearn's exactly.
  """
  n, k = x.shape
  mask = np.ones(k, dtype=bool)
  xc = x.astype(np.float64, copy=True)[:, mask]
  scale = np.nanstd(xc, axis=0)
  # sklearn's _handle_zeros_in_scale: (near-)constant columns are left unscaled.
  scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0
  xc /= scale
  # sklearn writes xc back and takes X[:, mask] again: the same values in the same layout.
  noise_scale = 1e-10 * np.maximum(1, np.mean(np.abs(xc), axis=0))
  rng = np.random.RandomState(seed)
  # Row blocks draw the same stream as one [N, K] draw (the Gaussian cache lives in the state)
  # and avoid an [N, K] temporary.
  rows = max(1, 2**22 // k)
  for r0 in range(0, n, rows):
    r1 = min(n, r0 + rows)
    xc[r0:r1] += noise_scale * rng.standard_normal(size=(r1 - r0, k))
  return xc


def _assemble_mi(n: int, n_c: int, nn: int, sum_psi_m: np.ndarray) -> np.ndarray:
  """Ross's estimate for `y == c` from the sum over kept points of psi(m_i)."""
  n_f = n - n_c
  sum_k = n_f * special.digamma(min(nn, n_f - 1))
  sum_cnt = n_f * special.digamma(n_f)
  n_kept = n_f
  if n_c >= 2:  # a singleton class is dropped, as in sklearn
    sum_k += n_c * special.digamma(min(nn, n_c - 1))
    sum_cnt += n_c * special.digamma(n_c)
    n_kept = n
  mi = special.digamma(n_kept) + (sum_k - sum_cnt - sum_psi_m) / n_kept
  return np.maximum(mi, 0.0)


# ---------------------------------------------------------------------------------------------
# Direct implementation (corner-case classes, and an independent cross-check in tests).
# ---------------------------------------------------------------------------------------------


def _brute_radius(v: np.ndarray, k: int) -> np.ndarray:
  """kNN radius within a small group as sklearn's brute-force ArgKmin computes it.

  Args:
    v: [n, ...] group values (query axis 0).
    k: neighbour rank (self excluded).

  Returns:
    [n, ...] radii, sqrt of the (k+1)-th smallest max(0, (|x_i|^2 - 2 x_i x_j) + |x_j|^2).
  """
  sq = v * v
  d2 = (sq[:, None] + (-2.0 * (v[:, None] * v[None, :]))) + sq[None, :]
  d2 = np.maximum(d2, 0.0)
  return np.sqrt(np.sort(d2, axis=1)[:, k])


def _is_brute(count: int, k: int) -> bool:
  # NearestNeighbors(algorithm="auto") picks brute force when n_neighbors >= n_samples // 2
  # (n_neighbors there is k, the +1 for the query itself is added later).
  return k >= count // 2


def _sorted_kth_gap(sorted_vals: np.ndarray, k: int) -> np.ndarray:
  """k-th nearest-neighbour distance of every element of ascending columns [n, K]."""
  n = sorted_vals.shape[0]
  inf = np.full((1,) + sorted_vals.shape[1:], np.inf)
  best = np.full(sorted_vals.shape, np.inf)
  for j in range(k + 1):  # j neighbours on the left, k - j on the right
    if j:
      left = sorted_vals - np.concatenate([np.broadcast_to(-inf, (j,) + inf.shape[1:]),
                                           sorted_vals[:n - j]])
    else:
      left = np.zeros_like(sorted_vals)
    if k - j:
      right = np.concatenate([sorted_vals[k - j:],
                              np.broadcast_to(inf, (k - j,) + inf.shape[1:])]) - sorted_vals
    else:
      right = np.zeros_like(sorted_vals)
    best = np.minimum(best, np.maximum(left, right))
  return best


def _count_within(sorted_cols: np.ndarray, v: np.ndarray, rr: np.ndarray) -> np.ndarray:
  """#{j : |sorted_cols[j] - v| <= rr}, with the difference rounded as sklearn's tree does."""
  n = sorted_cols.shape[0]
  cols = np.arange(sorted_cols.shape[1])[None, :]

  def first_true(pred):
    lo = np.zeros(v.shape, np.int64)
    hi = np.full(v.shape, n, np.int64)
    while np.any(lo < hi):
      mid = (lo + hi) // 2
      val = sorted_cols[np.minimum(mid, n - 1), cols]
      p = np.where(mid >= n, True, pred(val))
      active = lo < hi
      hi = np.where(active & p, mid, hi)
      lo = np.where(active & ~p, mid + 1, lo)
    return lo

  lo = first_true(lambda val: v - val <= rr)
  hi = first_true(lambda val: val - v > rr)
  return np.maximum(hi - lo, 0)


def _reference_mi_cd(xn: np.ndarray, d: np.ndarray, nn: int) -> np.ndarray:
  """sklearn's `_compute_mi_cd` for every column of xn [N, K] and a boolean target d [N]."""
  n = xn.shape[0]
  radius = np.zeros(xn.shape)
  k_all = np.zeros(n)
  label_counts = np.zeros(n)
  for label in (False, True):
    mask = d == label
    count = int(mask.sum())
    label_counts[mask] = count
    if count < 2:
      continue
    k = min(nn, count - 1)
    k_all[mask] = k
    xg = xn[mask]
    if _is_brute(count, k):
      radius[mask] = _brute_radius(xg, k)
    else:
      order = np.argsort(xg, axis=0)
      r_sorted = _sorted_kth_gap(np.take_along_axis(xg, order, axis=0), k)
      r = np.empty_like(r_sorted)
      np.put_along_axis(r, order, r_sorted, axis=0)
      radius[mask] = r
  kept = label_counts > 1
  xk = xn[kept]
  rr = np.nextafter(radius[kept], 0)
  m = _count_within(np.sort(xk, axis=0), xk, rr)
  mi = (special.digamma(kept.sum()) + np.mean(special.digamma(k_all[kept])) -
        np.mean(special.digamma(label_counts[kept])) -
        np.mean(special.digamma(m), axis=0))
  return np.maximum(mi, 0.0)


# ---------------------------------------------------------------------------------------------
# Fast path: shared neighbour structure per filter, all classes at once, on the device.
# ---------------------------------------------------------------------------------------------


def _padded_length(n: int) -> int:
  """Rounds N up (by < 1/16) so nearby sample counts share one compiled kernel."""
  step = 1 << max(0, n.bit_length() - 5)
  return -(-n // step) * step


def _fast_sum_psi_m(xn, y, counts, fast, nn, chunk_size):
  """Sum over kept points of psi(m_i), for the classes marked `fast`.

  Returns:
    ([C, K] sums, [K] bool mask of filters with repeated values). Those filters' sums are not
    computed here (the kernel assumes distinct values) and must be computed another way.
  """
  n, k_filters = xn.shape
  num_classes = counts.shape[0]
  p = _padded_length(n)
  # Padding samples sit at +inf with their own label C, after every real sample.
  counts_pad = np.append(counts, p - n)
  starts = np.concatenate([[0], np.cumsum(counts_pad)[:-1]])
  own_k = np.where(counts_pad >= 2, np.minimum(nn, counts_pad - 1), 0)
  brute = [c for c in range(num_classes)
           if counts[c] >= 2 and _is_brute(int(counts[c]), int(own_k[c]))]
  # Small integer labels let numpy's stable argsort use radix sort.
  label_dtype = np.int16 if num_classes < 2**15 - 1 else np.int32
  y_pad = np.append(y, np.full(p - n, num_classes)).astype(label_dtype)
  psi = special.digamma(np.arange(p + 2, dtype=np.float64))
  psi[0] = 0.0  # never used (m >= 1); avoids carrying -inf around
  class_end = starts + counts_pad
  tables = dict(
      cls_count=counts_pad.astype(np.int32),
      cls_start=starts.astype(np.int32),
      cls_k=own_k.astype(np.int32),
      cls_fast=np.append(fast, False),
      cls_of_q=np.repeat(np.arange(num_classes + 1), counts_pad).astype(np.int32),
      cls_end=class_end.astype(np.int32),
      psi=psi,
      n_real=np.int32(n),
  )
  static = dict(
      nn=nn,
      num_classes=num_classes,
      window=_WINDOW_EXTRA + nn,
  )

  if chunk_size is None:
    cells = _CPU_CELLS_PER_CHUNK if jax.default_backend() == "cpu" else _ACCEL_CELLS_PER_CHUNK
    chunk_size = max(1, cells // p)
  b = int(min(chunk_size, k_filters))
  cells = b * nn * p  # (point, slot) pairs per call
  static["overflow_cap"] = min(cells, max(_OVERFLOW_CAP_MIN, cells // _OVERFLOW_CAP_FRACTION))
  host_b = max(b, min(k_filters, _HOST_COLUMNS_PER_SORT))  # amortise numpy call overhead

  outs = []
  dup = np.zeros(k_filters, dtype=bool)
  with jax.enable_x64(True):
    dev_tables = {name: jnp.asarray(v) for name, v in tables.items()}
    for h0 in range(0, k_filters, host_b):
      cols = np.arange(h0, min(k_filters, h0 + host_b))
      s_h, lab_h, pc_h = _order_columns(xn, cols, y_pad, p)
      dup[cols] = np.any(s_h[:, 1:n] == s_h[:, :n - 1], axis=1)
      r_h = _brute_override(s_h, pc_h, starts, counts, own_k, brute)
      for j0 in range(0, len(cols), b):
        rows = np.arange(j0, j0 + b)
        rows = np.where(rows < len(cols), rows, j0)  # pad the last chunk with a real column
        out = _sum_psi_m_chunk(
            s_h[rows], lab_h[rows], pc_h[rows], r_h[rows], **dev_tables, **static)
        # Dispatch is asynchronous: the host sorts the next columns while this runs.
        outs.append(out[: min(b, len(cols) - j0)])
    result = np.concatenate([np.asarray(o) for o in outs], axis=0)  # [K, C]
  return result.T, dup


def _order_columns(xn, cols, y_pad, p):
  """Value-sorted values and labels, and the class-grouped order, for columns `cols`.

  Returns:
    s [B, P] ascending values (padding +inf), lab [B, P] int32 labels in that order, and
    pc [B, P] int32: for class-grouped slot q (classes in order, each in ascending value), its
    position in the value-sorted order.
  """
  n = xn.shape[0]
  xt = np.empty((len(cols), p))
  xt[:, :n] = xn[:, cols].T
  xt[:, n:] = np.inf
  order = np.argsort(xt, axis=1)
  s = np.take_along_axis(xt, order, axis=1)
  lab = y_pad[order]
  pc = np.argsort(lab, axis=1, kind="stable").astype(np.int32)
  return s, lab.astype(np.int32), pc


def _brute_override(s, pc, starts, counts, own_k, brute):
  """[B, P] own-class radii for classes sklearn brute-forces, NaN elsewhere."""
  out = np.full(s.shape, np.nan)
  if not brute:
    return out
  v = np.take_along_axis(s, pc, axis=1)  # class-grouped values
  for c in brute:
    seg = slice(starts[c], starts[c] + counts[c])
    out[:, seg] = _brute_radius(v[:, seg].T, int(own_k[c])).T
  return out


def _kth_of_two_sorted(a, b, k):
  """k-th smallest of the union of ascending lists a[0..k-1], b[0..k-1] (entries may be inf).

  min over j of max(a_j, b_{k-j}) with a_0 = b_0 = 0: j neighbours from the left, k-j right.
  """
  best = None
  for j in range(k + 1):
    left = a[j - 1] if j else None
    right = b[k - j - 1] if k - j else None
    cand = right if left is None else (left if right is None else jnp.maximum(left, right))
    best = cand if best is None else jnp.minimum(best, cand)
  return best


def _bisect_once(preds, carry):
  """One bisection step of every search: (lo, hi) narrows to the first index where pred holds."""
  out = []
  for pred, (lo, hi) in zip(preds, carry):
    mid = (lo + hi) // 2
    ok = pred(mid)
    active = lo < hi
    out.append((jnp.where(active & ~ok, mid + 1, lo), jnp.where(active & ok, mid, hi)))
  return tuple(out)


def _first_true(searches, iters: int):
  """Binary searches run in lockstep: for each (pred, lo, hi), the smallest i in [lo, hi]
  with pred(i), for pred monotone on [lo, hi) and taken as true at hi.

  `iters` must be >= ceil(log2(max(hi - lo) + 1)). One shared loop: on CPU every while-loop
  iteration costs a host round trip, so separate loops per search would dominate.
  """
  preds = [pred for pred, _, _ in searches]

  def body(_, carry):
    return _bisect_once(preds, carry)

  init = tuple((lo, hi) for _, lo, hi in searches)
  return [lo for lo, _ in jax.lax.fori_loop(0, iters, body, init)]


def _first_non_c(dist, labels, c, nn):
  """Per slot class c: distances to the nn nearest window entries whose label is not c.

  Args:
    dist: [W, B, P] distances to the window entries, ascending along W.
    labels: [W, B, P] their labels.
    c: [S, B, P] the class each slot excludes.
    nn: how many to find.

  Returns:
    S arrays [nn, B, P] of distances (valid where found) and [S, B, P] whether the window
    held at least nn entries not labelled c.
  """
  w = dist.shape[0]
  extra = w - nn
  # n_c[j]: entries labelled c among the first j + 1.
  n_c = jnp.cumsum((labels[None] == c[:, None]).astype(jnp.int32), axis=1)  # [S, W, B, P]
  found = []
  for m in range(nn):
    # The (m+1)-th non-c entry is entry m + x for the smallest x with n_c[m + x] == x.
    out = jnp.broadcast_to(dist[m + extra], c.shape)
    for x in range(extra - 1, -1, -1):
      out = jnp.where(n_c[:, m + x] == x, dist[m + x], out)
    found.append(out)
  return jnp.stack(found, axis=1), n_c[:, -1] <= extra


def _window(x, w: int, fill_left, fill_right):
  """[W, B, P] x[b, i - j] (left, j = 1..W) and x[b, i + j] (right), filled outside."""
  bsz, p = x.shape
  pad = jnp.concatenate([jnp.full((bsz, w), fill_left, x.dtype), x,
                         jnp.full((bsz, w), fill_right, x.dtype)], axis=1)
  left = jnp.stack([pad[:, w - j:w - j + p] for j in range(1, w + 1)])
  right = jnp.stack([pad[:, w + j:w + j + p] for j in range(1, w + 1)])
  return left, right


@functools.partial(jax.jit, static_argnames=("nn", "num_classes", "window", "overflow_cap"))
def _sum_psi_m_chunk(s, lab, pc, r_override, *, cls_count, cls_start, cls_k, cls_fast,
                     cls_of_q, cls_end, psi, n_real, nn, num_classes, window, overflow_cap):
  """[B, C] sum over kept points of psi(m_i) for `y == c`, for B filters (fast classes only).

  s [B, P] ascending values (distinct among real points), lab [B, P] their labels, pc [B, P]
  the class-grouped order, r_override [B, P] own-class radii sklearn brute-forces (else NaN).
  """
  bsz, p = s.shape
  c1 = num_classes + 1
  inf = jnp.array(jnp.inf, s.dtype)
  pos = jnp.arange(p, dtype=jnp.int32)[None, :]
  real = pos < n_real
  base = (jnp.arange(bsz, dtype=jnp.int32) * p)[:, None]  # row offsets into flattened arrays
  s_flat = s.reshape(-1)

  def take(x, idx):
    return x[jnp.clip(idx, 0, x.shape[0] - 1)]

  # --- Windows of the nearest points on each side in sorted order. s[i] - s[i-j] is the
  # rounded |x_i - x_j| that sklearn's tree compares (sqrt(d*d) == |d| exactly).
  s_left, s_right = _window(s, window, -inf, inf)
  d_left, d_right = s - s_left, s_right - s  # [W, B, P], ascending along W
  l_left, l_right = _window(lab, window, -1, -1)

  # --- Plain kNN over all points: the "y != c" radius unless class c is among the neighbours.
  r_glob = _kth_of_two_sorted(d_left[:nn], d_right[:nn], nn)
  rr_glob = jnp.nextafter(r_glob, 0.0)  # sklearn's radius; <= rr is < r as r > 0
  n_right_in = jnp.sum(d_right[:nn] <= rr_glob, axis=0, dtype=jnp.int32)
  m_glob = 1 + jnp.sum(d_left[:nn] <= rr_glob, axis=0, dtype=jnp.int32) + n_right_in
  psi_glob = jnp.where(real, take(psi, m_glob), 0.0)
  # A set of k nearest neighbours that holds every strictly closer one: as many from the left
  # as are within r, leaving room for the strictly closer ones on the right.
  n_left_le = jnp.sum(d_left[:nn] <= r_glob, axis=0, dtype=jnp.int32)
  n_from_left = jnp.minimum(nn - n_right_in, n_left_le)

  # --- Corrections for the classes among each point's k nearest neighbours (slots): their
  # "y != c" radius skips class c. Found in the window; rare overflows (long runs of c in
  # sorted order) take the exact gather path. Slot t is left neighbour t, or right neighbour
  # t - n_from_left. Arrays below are [nn slots, B, P].
  t = jnp.arange(1, nn + 1, dtype=jnp.int32)[:, None, None]
  on_left = n_from_left >= t
  c = jnp.where(on_left, l_left[:nn], -1)
  d_slot = jnp.where(on_left, d_left[:nn], inf)
  for j in range(1, nn + 1):
    pick = ~on_left & (t - n_from_left == j)
    c = jnp.where(pick, l_right[j - 1], c)
    d_slot = jnp.where(pick, d_right[j - 1], d_slot)
  valid = real & (c != lab) & (c >= 0) & take(cls_fast, c)
  repeat = [jnp.zeros((bsz, p), bool)]
  for k in range(1, nn):  # each class once per point
    repeat.append(jnp.any(c[:k] == c[k], axis=0))
  valid &= ~jnp.stack(repeat)
  c = jnp.where(valid, c, num_classes)
  keep_c = take(cls_count, c) >= 2  # sklearn drops a class with one sample
  a_nc, ok_left = _first_non_c(d_left, l_left, c, nn)
  b_nc, ok_right = _first_non_c(d_right, l_right, c, nn)
  r_f = _kth_of_two_sorted([a_nc[:, m] for m in range(nn)], [b_nc[:, m] for m in range(nn)],
                           nn)
  rr_f = jnp.nextafter(r_f, 0.0)
  # With nn non-c points found on each side, everything within r_f lies in the window. Of a
  # class with one sample only the slot point itself is near, and sklearn drops it.
  m_f = (1 + jnp.sum(d_left[None] <= rr_f[:, None], axis=1, dtype=jnp.int32) +
         jnp.sum(d_right[None] <= rr_f[:, None], axis=1, dtype=jnp.int32) -
         (~keep_c & (d_slot <= rr_f)).astype(jnp.int32))
  overflow = valid & ~(ok_left & ok_right)
  slot_corr = jnp.where(valid & ~overflow, take(psi, m_f) - psi_glob, 0.0)
  corr = jax.ops.segment_sum(slot_corr.reshape(-1), (c + base // p * c1).reshape(-1),
                             num_segments=bsz * c1)
  corr += _overflow_corrections(s, lab, c, overflow, psi_glob, psi=psi, cls_count=cls_count,
                                nn=nn, num_classes=num_classes, cap=overflow_cap)

  # --- Own class ("y == c" points): kNN within the class, then count all points around.
  v_cls = jnp.take_along_axis(s, pc, axis=1)  # class-grouped values, ascending per class
  q_cls = cls_of_q[None, :]
  seg_lo = take(cls_start, q_cls)
  seg_hi = seg_lo + take(cls_count, q_cls)
  v_left, v_right = _window(v_cls, nn, -inf, inf)
  a_own = jnp.where(pos - t >= seg_lo, v_cls - v_left, inf)  # [nn, B, P]
  b_own = jnp.where(pos + t < seg_hi, v_right - v_cls, inf)
  k_own = take(cls_k, q_cls)
  r_own = jnp.full((bsz, p), inf)
  for kk in range(1, nn + 1):
    r_own = jnp.where(k_own == kk, _kth_of_two_sorted(a_own, b_own, kk), r_own)
  r_own = jnp.where(jnp.isnan(r_override), r_own, r_override)
  own_valid = (k_own >= 1) & (q_cls < num_classes)
  rr_own = jnp.where(own_valid, jnp.nextafter(r_own, 0.0), 0.0)
  first_in, first_out = _first_true(
      [(lambda i: v_cls - take(s_flat, base + i) <= rr_own, jnp.zeros_like(pc), pc),
       (lambda i: take(s_flat, base + i) - v_cls > rr_own, pc + 1, jnp.full_like(pc, p))],
      max(1, math.ceil(math.log2(p + 1))))
  psi_own = jnp.where(own_valid, take(psi, first_out - first_in), 0.0)

  # --- Per class, in class-grouped order: own points' psi(m), minus their plain-kNN psi(m)
  # (they are not "y != c" points for their own class). Segments are contiguous: prefix sums.
  per_point = psi_own - jnp.take_along_axis(psi_glob, pc, axis=1)
  prefix = jax.lax.associative_scan(jnp.add, per_point, axis=1)
  prefix = jnp.concatenate([jnp.zeros((bsz, 1), s.dtype), prefix], axis=1)
  seg_sum = jnp.take(prefix, cls_end, axis=1) - jnp.take(prefix, cls_start, axis=1)
  # Sum over "y != c" points = everyone's plain value - class c's own + corrections.
  total = jnp.sum(psi_glob, axis=1, keepdims=True) + seg_sum + corr.reshape(bsz, c1)
  return total[:, :num_classes]


def _overflow_corrections(s, lab, slot_c, overflow, psi_glob, *, psi, cls_count, nn,
                          num_classes, cap):
  """[B*(C+1)] corrections for (point, class c) pairs whose window held < nn non-c points.

  Exact and gather-based, so it only runs on the compacted overflowing pairs, `cap` at a time:
  the nn nearest non-c points on each side are found by skipping whole runs of class c in
  sorted order, and the class-c points within the radius are those of the runs passed over,
  plus part of the run just outside the last non-c point inside the radius (binary search).
  """
  _, bsz, p = slot_c.shape
  c1 = num_classes + 1
  n_elem = slot_c.size
  flags = overflow.reshape(-1)
  n_over = jnp.sum(flags.astype(jnp.int32))
  inf = jnp.array(jnp.inf, s.dtype)

  def take(x, idx):
    return x[jnp.clip(idx, 0, x.shape[0] - 1)]

  def run_all():
    ordinal = jax.lax.associative_scan(jnp.add, flags.astype(jnp.int32)) - 1
    elem = jnp.arange(n_elem, dtype=jnp.int32)
    listed = jnp.full((n_elem + cap,), -1, jnp.int32).at[
        jnp.where(flags, ordinal, n_elem + cap)].set(elem, mode="drop")
    # Runs of equal labels in sorted order: skipping a run of class c is one gather.
    pos = jnp.arange(p, dtype=jnp.int32)[None, :]
    change = lab[:, 1:] != lab[:, :-1]
    edge = jnp.ones((bsz, 1), bool)
    run_start = jax.lax.cummax(jnp.where(jnp.concatenate([edge, change], 1), pos, 0), axis=1)
    run_end = jax.lax.cummin(jnp.where(jnp.concatenate([change, edge], 1), pos, p - 1),
                             axis=1, reverse=True)
    # Per side (left, right): the nearest position beyond the run, i.e. with another label.
    skip_to = jnp.stack([run_start - 1, run_end + 1]).reshape(-1)
    s_flat, lab_flat = s.reshape(-1), lab.reshape(-1)
    c_flat, g_flat = slot_c.reshape(-1), psi_glob.reshape(-1)
    step = jnp.array([[-1], [1]], jnp.int32)  # [2 sides, 1]
    side_base = jnp.array([[0], [bsz * p]], jnp.int32)

    def batch(i, acc):
      e = jax.lax.dynamic_slice(listed, (i * cap,), (cap,))
      ok = e >= 0
      row, pt = (e // p) % bsz, e % p
      base = row * p
      c = take(c_flat, e)
      x = take(s_flat, base + pt)

      def inside(q):
        return (q >= 0) & (q < p)

      q, qs, ds = pt + step, [], []  # the nn nearest non-c points on each side
      for _ in range(nn):
        skip = inside(q) & (take(lab_flat, base + q) == c)
        q = jnp.where(skip, take(skip_to, side_base + base + q), q)
        qs.append(q)
        # fl(x - v) == -fl(v - x): the left distance is exact.
        ds.append(jnp.where(inside(q), (take(s_flat, base + q) - x) * step, inf))
        q = q + step
      qs, ds = jnp.stack(qs), jnp.stack(ds)  # [nn, 2, cap]
      r_f = _kth_of_two_sorted(ds[:, 0], ds[:, 1], nn)
      rr_f = jnp.nextafter(r_f, 0.0)
      n_in = jnp.sum(ds <= rr_f, axis=0, dtype=jnp.int32)  # [2, cap]; < nn as r_f <= ds[-1]
      last_in, first_out = jnp.broadcast_to(pt, (2, cap)), qs[0]
      for m in range(1, nn):
        last_in = jnp.where(n_in == m, qs[m - 1], last_in)
        first_out = jnp.where(n_in == m, qs[m], first_out)
      # Everything from pt to last_in is within; of the c run strictly between last_in and
      # first_out, the part nearest to last_in: on the left, points from the first one within
      # up to last_in; on the right, up to the first one out.
      left = step < 0
      lo = jnp.where(left, first_out + 1, last_in + 1)
      hi = jnp.where(left, last_in, first_out)

      def pred(k):
        v = take(s_flat, base + k)
        return jnp.where(left, x - v <= rr_f, v - x > rr_f)

      (found,) = _first_true_dynamic([(pred, lo, hi)])
      in_run = jnp.where(left, hi - found, found - lo)
      m_f = 1 + jnp.sum((last_in - pt) * step + in_run, axis=0)
      # sklearn drops a class with one sample: then only the non-c points count.
      m_f = jnp.where(take(cls_count, c) >= 2, m_f, 1 + jnp.sum(n_in, axis=0))
      val = jnp.where(ok, take(psi, m_f) - take(g_flat, base + pt), 0.0)
      return acc + jax.ops.segment_sum(val, jnp.where(ok, row * c1 + c, 0),
                                       num_segments=bsz * c1)

    n_batches = (n_over + cap - 1) // cap
    return jax.lax.fori_loop(0, n_batches, batch, jnp.zeros((bsz * c1,), s.dtype))

  return jax.lax.cond(n_over > 0, run_all, lambda: jnp.zeros((bsz * c1,), s.dtype))


def _first_true_dynamic(searches):
  """Like `_first_true`, looping only until every search has converged."""
  preds = [pred for pred, _, _ in searches]

  def body(carry):
    return _bisect_once(preds, carry)

  def cond(carry):
    return jnp.any(jnp.stack([jnp.any(lo < hi) for lo, hi in carry]))

  init = tuple((lo, hi) for _, lo, hi in searches)
  return [lo for lo, _ in jax.lax.while_loop(cond, body, init)]
