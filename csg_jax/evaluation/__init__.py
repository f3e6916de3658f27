"""The interpretability suite: the evaluation pass, MIS and filter-class assignment (with the
sklearn-exact MI estimator), the per-run report, localization, attacks, adversarial-sample
detection, the applications runner and every figure."""
