"""Adversarial-sample detection from last-layer filter activations (docs/csg-method.md §5.3).

The paper released no detector; csg_jax's protocol (docs/applications.md):

- Scores, higher = "more likely adversarial":
  * gate consistency (CSG models): c(x) = Σ_k G[ŷ, k] f_k(x) / Σ_k f_k(x), the share of the
    pooled activation f = GAP(A) that falls on filters the gate opens for the predicted class
    ŷ; the score is 1 - c. No fitting.
  * profile consistency (any model, a gate-free baseline): the same with G replaced by the
    class profile P[c, k] = mean f_k over clean held-out images of class c, each filter's
    column divided by its maximum over classes (the released gate's projection).
  * logistic regression on standardised f, fitted on clean vs attacked features of one half of
    the test images and scored on the other half (the same image never sits on both sides).
- ROC-AUC (sklearn.metrics.roc_auc_score) of clean (0) vs attacked (1).
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections
import numpy as np
from sklearn import linear_model, metrics, pipeline, preprocessing

from csg_jax.errors import CSGError


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.fit_fraction = 0.5  # share of test images whose clean/attacked pairs fit the detectors
  c.successful_only = True  # keep clean images classified correctly and attacks that flip them
  c.logreg_c = 1.0  # inverse L2 strength of the logistic regression
  c.seed = 0  # the fit/eval split of test images
  return c


def validate_config(c) -> None:
  if not 0 < c.fit_fraction < 1:
    raise CSGError(f"detection.fit_fraction is {c.fit_fraction}: set it in (0, 1)")
  if c.logreg_c <= 0:
    raise CSGError(f"detection.logreg_c is {c.logreg_c}: set it > 0")


def consistency(features: np.ndarray, predictions: np.ndarray, gate: np.ndarray) -> np.ndarray:
  """Σ_k G[ŷ, k] f_k / Σ_k f_k per sample (features [N, K] >= 0, gate [C, K] in [0, 1])."""
  features = np.maximum(np.asarray(features, np.float64), 0.0)
  total = features.sum(axis=1)
  on_class = (np.asarray(gate, np.float64)[np.asarray(predictions)] * features).sum(axis=1)
  # A sample with no activation at all says nothing: it gets the neutral value 0.5.
  return np.where(total > 0, on_class / np.where(total > 0, total, 1.0), 0.5)


def class_profile(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, K] class means of the features, each filter's column scaled to a maximum of 1."""
  features = np.asarray(features, np.float64)
  onehot = np.eye(num_classes)[np.asarray(labels)]
  means = onehot.T @ features / np.maximum(onehot.sum(0), 1)[:, None]
  col_max = means.max(axis=0, keepdims=True)
  return np.clip(means / np.where(col_max > 0, col_max, 1.0), 0.0, 1.0)


def roc_auc(clean_scores: np.ndarray, adversarial_scores: np.ndarray) -> float:
  """ROC-AUC of telling adversarial (positive) from clean samples by a score."""
  y, s = _stack(clean_scores, adversarial_scores)
  if len(np.unique(y)) < 2:
    return float("nan")
  return float(metrics.roc_auc_score(y, s))


def roc_curve(clean_scores: np.ndarray, adversarial_scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
  y, s = _stack(clean_scores, adversarial_scores)
  fpr, tpr, _ = metrics.roc_curve(y, s)
  return fpr, tpr


def _stack(clean, adversarial):
  clean, adversarial = np.asarray(clean, np.float64), np.asarray(adversarial, np.float64)
  y = np.concatenate([np.zeros(len(clean)), np.ones(len(adversarial))])
  return y, np.concatenate([clean, adversarial])


def fit_logistic_detector(clean_features: np.ndarray, adversarial_features: np.ndarray, *,
                          c: float, seed: int):
  """A StandardScaler + logistic-regression detector fitted on clean (0) vs attacked (1)."""
  y, _ = _stack(np.zeros(len(clean_features)), np.zeros(len(adversarial_features)))
  if len(np.unique(y)) < 2:
    raise CSGError("the detector needs both clean and attacked samples to fit on: use more test "
                   "images or a stronger attack (or set detection.successful_only=False)")
  x = np.concatenate([clean_features, adversarial_features]).astype(np.float64)
  model = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(C=c, max_iter=5000, random_state=seed))
  return model.fit(x, y)


def split_indices(num: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded split of image indices into (fit, eval), both sorted."""
  perm = np.random.default_rng([seed, num]).permutation(num)
  cut = int(round(fit_fraction * num))
  return np.sort(perm[:cut]), np.sort(perm[cut:])


def evaluate_detection(clean: Mapping[str, np.ndarray], attacked: Mapping[str, np.ndarray],
                       labels: np.ndarray, num_classes: int, *, gate: np.ndarray | None = None,
                       config=None) -> dict[str, dict]:
  """Every detector on one attack: AUCs and ROC curves.

  Args:
    clean, attacked: {'features' [N, K], 'prediction' [N]} for the same N test images.
    labels: [N] true labels.
    gate: G [C, K] of a CSG model, or None (no gate-consistency score).
  Returns: {detector: {'auc', 'fpr', 'tpr', 'num_clean', 'num_adversarial'}}.
  """
  cfg = config or default_config()
  validate_config(cfg)
  labels = np.asarray(labels)
  fit, held = split_indices(len(labels), cfg.fit_fraction, cfg.seed)
  correct = clean["prediction"] == labels
  fooled = attacked["prediction"] != labels
  keep_clean = correct if cfg.successful_only else np.ones_like(correct)
  keep_adv = (correct & fooled) if cfg.successful_only else np.ones_like(correct)

  def rows(idx, keep):
    return idx[keep[idx]]

  fit_c, fit_a = rows(fit, keep_clean), rows(fit, keep_adv)
  ev_c, ev_a = rows(held, keep_clean), rows(held, keep_adv)
  out = {}

  def record(name, score_clean, score_adv):
    fpr, tpr = roc_curve(score_clean, score_adv) if len(ev_c) and len(ev_a) else ([], [])
    out[name] = {"auc": roc_auc(score_clean, score_adv), "fpr": np.asarray(fpr),
                 "tpr": np.asarray(tpr), "num_clean": int(len(score_clean)),
                 "num_adversarial": int(len(score_adv))}

  if gate is not None:
    g = np.asarray(gate)
    record("gate_consistency",
           1 - consistency(clean["features"][ev_c], clean["prediction"][ev_c], g),
           1 - consistency(attacked["features"][ev_a], attacked["prediction"][ev_a], g))
  profile = class_profile(clean["features"][fit_c], labels[fit_c], num_classes)
  record("profile_consistency",
         1 - consistency(clean["features"][ev_c], clean["prediction"][ev_c], profile),
         1 - consistency(attacked["features"][ev_a], attacked["prediction"][ev_a], profile))
  if len(fit_c) and len(fit_a):
    detector = fit_logistic_detector(clean["features"][fit_c], attacked["features"][fit_a],
                                     c=cfg.logreg_c, seed=cfg.seed)
    record("logistic_regression",
           detector.predict_proba(clean["features"][ev_c])[:, 1] if len(ev_c) else np.zeros(0),
           detector.predict_proba(attacked["features"][ev_a])[:, 1] if len(ev_a) else np.zeros(0))
  else:
    out["logistic_regression"] = {"auc": float("nan"), "fpr": np.zeros(0), "tpr": np.zeros(0),
                                  "num_clean": int(len(ev_c)), "num_adversarial": int(len(ev_a))}
  return out

