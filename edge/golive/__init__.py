"""medge.edge.golive: the statistics a hospital needs to validate a binary classifier before go-live and to
watch it drift after, and the two jobs built on them.

Numpy and the standard library only (the edge box has no scipy or scikit-learn); each figure is checked in
the tests against scikit-learn, statsmodels or scipy.

- ``roc``: the ROC curve, ``auc_ci`` (Newcombe's score interval, DeLong's se), ``auc_difference`` (site vs validation);
- ``proportions``: ``confusion``, ``binary_figures`` at a threshold with ``wilson_interval``s, ``newcombe_difference``
  of two shares, and the changes a share test detects (``detectable_difference``, ``detectable_share``);
- ``calibration``: ``brier_score``, ``reliability`` (ECE, MCE), ``calibration_curve``, ``fit_temperature_bounded``
  (a ``TemperatureFit`` that says when T stopped at an end of its range) and ``fit_temperature``;
- ``thresholds``: ``parse_criterion``, ``choose_threshold`` (the operating point, a target met by a
  ``clopper_pearson_lower`` bound from the scores' order statistics; ``cases_needed``, ``TooFewCasesError``);
- ``shift``: ``psi`` (Laplace-smoothed) with its simulated ``psi_noise_floor``, ``ks_2samp``, ``min_detectable_shift``;
- ``distributions``: the normal and chi-square quantiles and the Kolmogorov-Smirnov tail they rest on;
- ``multilabel``: a multi-label bundle's validation per finding (AUC, figures at each finding's threshold, its
  guarantee confirmed or refuted at the site), macro and micro AUC, subgroups (sex, age band, view, manufacturer);
- ``validation`` (``medge validate``'s report on labelled images) and ``drift`` (``medge monitor``'s checks
  of prediction records against the bundle's reference); ``plots`` draws their charts (matplotlib, lazily);
- ``wording``: figures for people (names, three decimals, intervals "0.400 (0.264 to 0.554)", the decision rule of
  each figure and why argmax's and the operating point's differ), for the demo's report and the serve model card.

``softmax``, ``nll`` and ``roc_auc`` are the numeric core's (``edge.numeric``), re-exported here with the rest.

Every statistic takes plain arrays: ``y``, the truth, boolean or 0/1 (True or 1 = the positive class), and
``score``, the positive class's probability or any score where higher means more positive. A case is called
positive when ``score >= threshold``. Bad arguments (mismatched lengths, NaN or infinite scores, labels other
than 0/1, a criterion that cannot be read) raise ``medge.edge.errors.UsageError``. A figure that is undefined
on the data given (an AUC when one class is absent, a sensitivity with no positive case) is NaN, not an
error: a weekly monitoring job on a quiet week must report, not crash.

Usage::

    from medge.edge.golive import auc_ci, binary_figures, choose_threshold
    ci = auc_ci(y, score)  # {"auc": 0.91, "low": 0.87, "high": 0.95, ...}
    op = choose_threshold(y, score, "sensitivity=0.95")
    figures = binary_figures(y_test, score_test, op["threshold"])
"""
from medge.edge.golive.calibration import (
    TemperatureFit,
    brier_score,
    calibration_curve,
    fit_temperature,
    fit_temperature_bounded,
    reliability,
    temperature_note,
)
from medge.edge.golive.distributions import chi2_quantile, kolmogorov_sf, normal_quantile
from medge.edge.golive.proportions import (
    binary_figures,
    confusion,
    detectable_difference,
    detectable_share,
    newcombe_difference,
    wilson_interval,
)
from medge.edge.golive.roc import auc_ci, auc_difference, roc_curve
from medge.edge.golive.shift import PSI_PSEUDOCOUNT, ks_2samp, min_detectable_shift, psi, psi_noise_floor
from medge.edge.golive.thresholds import (
    CRITERIA_HELP,
    DEFAULT_CONFIDENCE,
    TooFewCasesError,
    cases_needed,
    choose_threshold,
    clopper_pearson_lower,
    max_supported_target,
    parse_criterion,
)
from medge.edge.numeric import nll, roc_auc, softmax

__all__ = [
    "CRITERIA_HELP", "DEFAULT_CONFIDENCE", "PSI_PSEUDOCOUNT", "TemperatureFit", "TooFewCasesError", "auc_ci",
    "auc_difference", "binary_figures", "brier_score", "calibration_curve", "cases_needed", "chi2_quantile",
    "choose_threshold", "clopper_pearson_lower", "confusion", "detectable_difference", "detectable_share",
    "fit_temperature", "fit_temperature_bounded", "kolmogorov_sf", "ks_2samp", "max_supported_target",
    "min_detectable_shift", "newcombe_difference", "nll", "normal_quantile", "parse_criterion", "psi",
    "psi_noise_floor", "reliability", "roc_auc", "roc_curve", "softmax", "temperature_note", "wilson_interval",
]
