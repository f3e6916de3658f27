"""Localization metrics: building blocks against references, and the streamed pass end to end."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from csg_jax.evaluation import localization as loc
from csg_jax import models
from csg_jax.methods import csg as csg_method


def test_iou_on_hand_made_masks():
  a = np.zeros((4, 6), bool)
  a[0:2, 0:2] = True  # 4 pixels
  b = np.zeros((4, 6), bool)
  b[0:2, 1:4] = True  # 6 pixels, 2 shared
  empty = np.zeros((4, 6), bool)
  got = np.asarray(loc.iou(np.stack([a, a, empty, a]), np.stack([b, a, empty, empty])))
  np.testing.assert_allclose(got, [2 / 8, 1.0, 0.0, 0.0])


def test_image_metric_ap_rules_and_per_class():
  ious = np.array([0.2, 0.3, 0.5, 0.1])
  labels = np.array([0, 0, 1, 1])
  inclusive = loc._image_metric(ious, labels, 2, ["a", "b"], 0.2, inclusive=True)
  assert inclusive["ap"] == pytest.approx(0.75)  # 0.2 counts for GradMap's >= 0.2
  assert inclusive["per_class"]["a"] == {"iou": pytest.approx(0.25), "ap": 1.0, "num_images": 2}
  exclusive = loc._image_metric(ious, labels, 2, ["a", "b"], 0.3, inclusive=False)
  assert exclusive["ap"] == pytest.approx(0.25)  # 0.3 does not count for CAM's > 0.3
  assert exclusive["iou"] == pytest.approx(0.275)


def test_top_fraction_mask_keeps_the_top_pixels():
  maps = jnp.arange(20.0).reshape(1, 4, 5)
  kept = np.asarray(loc.top_fraction_mask(maps, 0.3))
  assert kept.sum() == 6 and kept.ravel()[-6:].all()


@pytest.mark.parametrize("n,sigma,size", [(128, 30.0, 0), (32, 7.5, 0), (40, 3.0, 9), (8, 5.0, 0)])
def test_gaussian_blur_matches_scipy(n, sigma, size):
  rng = np.random.default_rng(0)
  image = rng.random((n, n + 3))
  radius = loc.gaussian_kernel_size(sigma, size) // 2
  if sigma == 30.0:
    assert 2 * radius + 1 == 61  # the released 61x61 kernel
  # scipy's 'mirror' is reflect-101, kornia's and OpenCV's default border.
  want = ndimage.gaussian_filter(image, sigma, mode="mirror", radius=radius)
  bh = loc.gaussian_blur_matrix(n, sigma, size)
  bw = loc.gaussian_blur_matrix(n + 3, sigma, size)
  np.testing.assert_allclose(bh @ image @ bw.T, want, atol=1e-6)


@pytest.mark.parametrize("out,inp", [(32, 8), (128, 4), (30, 7), (5, 5)])
def test_bilinear_matrix_matches_torch_align_corners_false(out, inp):
  x = np.random.default_rng(1).random(inp)
  got = loc.bilinear_matrix(out, inp) @ x
  # PyTorch's rule, written out: half-pixel source coordinate, clamped at 0 and at the last pixel.
  want = []
  for i in range(out):
    s = max((i + 0.5) * inp / out - 0.5, 0.0)
    lo = min(int(np.floor(s)), inp - 1)
    hi = min(lo + 1, inp - 1)
    want.append((1 - (s - lo)) * x[lo] + (s - lo) * x[hi])
  np.testing.assert_allclose(got, want, atol=1e-6)
  # And jax.image.resize agrees when upsampling.
  if out >= inp:
    np.testing.assert_allclose(got, jax.image.resize(x, (out,), "linear"), atol=1e-5)


def _radix_select(values: np.ndarray, fraction: float) -> np.ndarray:
  """The streamed radix select, fed in three chunks, as evaluate_localization runs it."""
  m, k = values.shape
  rank = np.full(k, max(1, int(fraction * m)), np.int64)
  prefix = np.zeros(k, np.uint32)
  valid = np.ones(m, bool)
  for level in range(3):
    hist = sum(np.asarray(loc.radix_histogram(jnp.asarray(chunk), jnp.asarray(valid[:len(chunk)]),
                                              jnp.asarray(prefix), level))
               for chunk in np.array_split(values, 3))
    prefix, rank = loc.radix_select_step(hist, prefix, rank, level)
  return loc.prefix_to_float(prefix)


def _kth_largest_reference(values: np.ndarray, fraction: float) -> np.ndarray:
  """The released computation: per column of values [M, K], its int(fraction·M)-th largest."""
  count = max(1, int(fraction * values.shape[0]))
  return np.sort(values, axis=0)[-count]


def test_radix_select_is_the_exact_order_statistic():
  rng = np.random.default_rng(0)
  values = np.maximum(rng.normal(size=(3000, 6)), 0).astype(np.float32)  # half zeros, as ReLU
  values[:, 1] = 0.0  # all zero
  values[:, 2] = np.round(values[:, 2], 1)  # many ties
  values[:, 3] *= 1e-30  # tiny, incl. subnormal values
  values[:, 4] = np.where(rng.random(3000) < 0.9, 0.0, values[:, 4] * 1e4)  # rank falls in zeros
  for fraction in (0.3, 0.001, 1.0):
    np.testing.assert_array_equal(_radix_select(values, fraction),
                                  _kth_largest_reference(values, fraction))


def test_summarize_activmap_on_known_sums():
  # 3 filters, 2 classes with 10 and 5 images.
  success = np.array([[8, 1], [2, 4], [0, 0]], float)
  iou_sum = np.array([[5.0, 0.5], [1.0, 2.5], [0.0, 0.0]])
  out = loc.summarize_activmap(iou_sum, success, np.array([10, 5]), ["a", "b"])
  assert out["related_class"] == [0, 1, 0]  # filter 2 never succeeds: first class, score 0
  np.testing.assert_allclose(out["filter_score"], [0.8, 0.8, 0.0])
  assert out["per_class"]["a"] == {"num_filters": 2, "ap": pytest.approx(0.4),
                                   "iou": pytest.approx(0.25)}
  assert out["per_class"]["b"] == {"num_filters": 1, "ap": pytest.approx(0.8),
                                   "iou": pytest.approx(0.5)}
  assert out["ap"] == pytest.approx((2 * 0.4 + 0.8) / 3)
  assert out["iou"] == pytest.approx((2 * 0.25 + 0.5) / 3)


def _tiny_setup(n=14, size=16, num_classes=3, seed=0):
  model = models.Classifier(models.TinyCNN(width=4), num_classes, 8,
                            gate=csg_method.GatedPath(num_classes, 8))
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(n, size, size, 3)).astype(np.float32)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  masks = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    y, x = rng.integers(0, size // 2, 2)
    masks[i, y:y + size // 2, x:x + size // 2] = 1
  variables = model.init(jax.random.PRNGKey(seed), images[:1])
  return model, variables, images, labels, masks


def _batches(images, labels, masks, batch_size):
  def make():
    n = len(images)
    for lo in range(0, n, batch_size):
      count = min(batch_size, n - lo)
      pad = batch_size - count
      yield {"image": np.pad(images[lo:lo + count], ((0, pad), (0, 0), (0, 0), (0, 0))),
             "label": np.pad(labels[lo:lo + count], (0, pad)),
             "mask": np.arange(batch_size) < count,
             "object_mask": np.pad(masks[lo:lo + count], ((0, pad), (0, 0), (0, 0)))}
  return make


def _reference(model, variables, images, labels, masks, cfg, num_classes):
  """A direct per-image, per-filter implementation of the released scripts' definitions."""
  fmap_fn = lambda x: model.apply(variables, x, train=False)["feature_map"]
  fmaps = np.asarray(fmap_fn(images))  # [N, h, w, K]
  n, h, w, k = fmaps.shape
  size = images.shape[1]
  feats = fmaps.mean((1, 2))
  means = np.stack([feats[labels == c].mean(0) for c in range(num_classes)])
  top = np.argsort(-means, axis=1, kind="stable")[:, :cfg.num_filters]
  radius = loc.gaussian_kernel_size(loc.blur_sigma(cfg, size)) // 2
  up = loc.bilinear_matrix(size, h)
  kernel = np.asarray(variables["params"]["head"]["kernel"])
  thresholds = np.sort(fmaps.reshape(-1, k), axis=0)[-max(1, int(0.3 * n * h * w))]

  def ref_iou(p, m):
    union = (p | m).sum()
    return (p & m).sum() / union if union else 0.0

  # One image and one filter per call, as the released script loops (jitted once: f is traced).
  grad_fn = jax.jit(jax.grad(lambda x, f: fmap_fn(x[None])[0, :, :, f].mean()))
  grad_ious, cam_ious, activ = [], [], np.zeros((n, k))
  for i in range(n):
    m = masks[i].astype(bool)
    per_filter = []
    for f in top[labels[i]]:
      g = np.asarray(grad_fn(images[i], f))
      g = np.sqrt((g**2).sum(-1))
      g = g / np.sqrt((g**2).mean())
      g = ndimage.gaussian_filter(g, loc.blur_sigma(cfg, size), mode="mirror", radius=radius)
      per_filter.append(ref_iou(g > 1, m))
    grad_ious.append(np.mean(per_filter))
    cam = up @ (fmaps[i] @ kernel[:, labels[i]]) @ up.T
    kth = np.sort(cam.ravel())[-int(0.3 * size * size)]
    cam_ious.append(ref_iou(cam >= kth, m))
    for f in range(k):
      activ[i, f] = ref_iou(up @ fmaps[i, :, :, f] @ up.T >= thresholds[f], m)
  return np.array(grad_ious), np.array(cam_ious), activ, top, thresholds


@pytest.mark.parametrize("filter_batch", [0, 2])
def test_streamed_localization_matches_a_per_image_reference(filter_batch):
  num_classes = 3
  model, variables, images, labels, masks = _tiny_setup(num_classes=num_classes)
  cfg = loc.default_config()
  cfg.num_filters = 3
  cfg.gradmap_filter_batch = filter_batch  # 2 of 3 filters: lax.map in groups, with a remainder
  cfg.gradmap_sigma = 2.0
  result = loc.evaluate_localization(model, variables, _batches(images, labels, masks, 6),
                                     num_classes=num_classes, image_hw=(16, 16), config=cfg,
                                     class_names=["a", "b", "c"])
  grad, cam, activ, top, thresholds = _reference(model, variables, images, labels, masks, cfg,
                                                 num_classes)
  assert result["num_images"] == 14
  assert result["gradmap"]["top_filters"] == top.tolist()
  np.testing.assert_array_equal(result["activmap"]["thresholds"], thresholds)
  assert result["gradmap"]["iou"] == pytest.approx(grad.mean(), abs=1e-5)
  assert result["gradmap"]["per_class"]["b"]["iou"] == pytest.approx(grad[labels == 1].mean(),
                                                                     abs=1e-5)
  assert result["cam"]["iou"] == pytest.approx(cam.mean(), abs=1e-5)
  assert result["cam"]["ap"] == pytest.approx((cam > 0.3).mean())
  onehot = np.eye(num_classes)[labels]
  want = loc.summarize_activmap(activ.T @ onehot, (activ > 0.3).T @ onehot,
                                onehot.sum(0).astype(int), ["a", "b", "c"])
  assert result["activmap"]["related_class"] == want["related_class"]
  assert result["activmap"]["ap"] == pytest.approx(want["ap"], abs=1e-6)
  assert result["activmap"]["iou"] == pytest.approx(want["iou"], abs=1e-5)


def test_bad_config_is_a_clear_error():
  from csg_jax.errors import CSGError
  cfg = loc.default_config()
  cfg.methods = ("gradmap", "saliency")
  with pytest.raises(CSGError, match="localization.methods"):
    loc.validate_config(cfg, 64)
  cfg = loc.default_config()
  cfg.gradmap_kernel_size = 8
  with pytest.raises(CSGError, match="odd"):
    loc.validate_config(cfg, 64)


def test_masks_of_another_data_version_are_refused():
  from csg_jax.errors import CSGError
  import types
  dataset = types.SimpleNamespace(splits={"test": [0] * 5}, image_shape=(8, 8, 3))
  with pytest.raises(CSGError, match="4 object masks but 5 test images"):
    loc.mask_batches(dataset, ml_collections.ConfigDict(), np.zeros((4, 8, 8), np.uint8),
                     batch_size=2)
