"""Intervals that mean what they say: simulation checks of coverage (the 95% interval holds a
known AUC in about 95% of seeded trials), of the paired comparison (it finds a real difference
and not a null one), and agreement of the point values with scikit-learn. numpy only, seconds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    roc_auc_score,
    roc_curve,
)

from mammo.coverage import coverage
from mammo.metrics import binary_metrics
from mammo.stats import (
    BootstrapSettings,
    bootstrap,
    calibration,
    delong,
    describe,
    paired_difference,
    point_metrics,
    proportion_interval,
    resample_counts,
    small_sample_warnings,
    subgroups,
)

TRIALS = 200


#: The least coverage a 95% interval must reach (issue 20): the reported intervals are tested
#: against it on seeded, fixed trial sets; ``mammo bench coverage`` measures it with 2,000 trials.
MIN_COVERAGE = 0.94


def within_binomial(hits: int, trials: int, p: float = 0.95, sds: float = 3.0, bias: float = 0.02) -> bool:
    """``hits / trials`` is within ``sds`` binomial standard deviations of ``p``, allowing a
    small known bias (slightly narrow): for DeLong's Wald interval, shown beside the reported
    one, and the paired bootstrap, not for the intervals reported as ``ci``."""
    sd = math.sqrt(p * (1 - p) / trials)
    return p - sds * sd - bias <= hits / trials <= min(1.0, p + sds * sd)


def binormal(rng: np.random.Generator, d: float, pos: int, neg: int, per_patient: int = 1, icc: float = 0.0):
    """Scores of patients with ``per_patient`` units each (label per patient); a patient effect
    with intra-class correlation ``icc``. Score variance 1 in both classes, so the true AUC of
    units from different patients is Phi(d / sqrt(2))."""
    labels = np.r_[np.ones(pos), np.zeros(neg)].astype(int)
    patient = rng.normal(0, math.sqrt(icc), pos + neg)[:, None]
    noise = rng.normal(0, math.sqrt(1 - icc), (pos + neg, per_patient))
    scores = (labels[:, None] * d + patient + noise).ravel()
    return np.repeat(labels, per_patient), scores, np.repeat(np.arange(pos + neg), per_patient)


def test_point_values_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.15).astype(int)
    s = np.round(rng.normal(size=400) + y, 1)  # rounded: many ties
    probs = 1 / (1 + np.exp(-s))
    got = point_metrics(y, probs, threshold=0.6, specificities=(0.9,), sensitivities=(0.8,))
    want = binary_metrics(y, probs, 0.6)
    assert got["auc"] == pytest.approx(roc_auc_score(y, probs), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(average_precision_score(y, probs), abs=1e-12)
    for key in ("pf1", "sensitivity", "specificity", "precision", "recall_rate", "f1", "accuracy"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    fpr, tpr, _ = roc_curve(y, probs)
    assert got["sens@spec=0.9"] == pytest.approx(tpr[fpr <= 0.1].max())
    assert got["spec@sens=0.8"] == pytest.approx(1 - fpr[tpr >= 0.8].min())


def test_resamples_are_seeded_and_draw_patients():
    counts = resample_counts(50, BootstrapSettings(resamples=30, seed=7))
    assert counts.shape == (30, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts == resample_counts(50, BootstrapSettings(resamples=30, seed=7))).all()
    assert (counts != resample_counts(50, BootstrapSettings(resamples=30, seed=8))).any()


def test_undefined_figures_have_no_interval():
    result = bootstrap([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"], 0.5, BootstrapSettings(100, 0))
    assert result["auc"]["value"] is None and result["auc"]["low"] is None
    assert result["specificity"]["value"] == 1.0


def test_the_95_interval_covers_a_known_auc_about_95_percent_of_the_time():
    d = 1.2
    truth = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(1)
    boot = dl = 0
    for trial in range(TRIALS):
        y, s, patients = binormal(rng, d, pos=40, neg=160)
        ci = bootstrap(y, s, patients, None, BootstrapSettings(resamples=300, seed=trial), which=("auc",))["auc"]
        boot += ci["low"] <= truth <= ci["high"]
        de = delong(y, s)
        dl += de["low"] <= truth <= de["high"]
    assert MIN_COVERAGE <= boot / TRIALS <= 0.995, boot / TRIALS
    assert within_binomial(dl, TRIALS), dl / TRIALS


def test_patients_not_images_are_resampled():
    """Four correlated images per patient: resampling patients keeps 95% coverage; resampling
    images as if independent (each image its own 'patient') does not."""
    d = 1.2
    truth = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(2)
    trials = TRIALS // 2
    by_patient = by_image = clustered = 0
    for trial in range(trials):
        y, s, patients = binormal(rng, d, pos=25, neg=75, per_patient=4, icc=0.8)
        settings = BootstrapSettings(resamples=250, seed=trial)
        ci = bootstrap(y, s, patients, None, settings, which=("auc",))["auc"]
        naive = bootstrap(y, s, np.arange(y.size), None, settings, which=("auc",))["auc"]
        by_patient += ci["low"] <= truth <= ci["high"]
        by_image += naive["low"] <= truth <= naive["high"]
        de = delong(y, s, clusters=patients)
        clustered += de["low"] <= truth <= de["high"]
    assert by_patient / trials >= MIN_COVERAGE, by_patient / trials
    assert within_binomial(clustered, trials), clustered / trials
    assert by_image / trials < 0.8  # ~0.6: far too narrow


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    trials = 100
    found_real = found_null = 0
    for trial in range(trials):
        labels = np.r_[np.ones(40), np.zeros(200)].astype(int)
        latent = rng.normal(size=labels.size)  # what both models see: paired, correlated scores
        better = labels * 1.6 + latent + rng.normal(0, 0.6, labels.size)
        worse = labels * 0.8 + latent + rng.normal(0, 0.6, labels.size)
        twin = labels * 0.8 + latent + rng.normal(0, 0.6, labels.size)  # as good as `worse`
        patients = np.arange(labels.size)
        settings = BootstrapSettings(resamples=300, seed=trial)
        real = paired_difference(labels, better, worse, patients, "auc", settings)
        null = paired_difference(labels, twin, worse, patients, "auc", settings)
        found_real += real["difference"]["low"] > 0
        found_null += null["difference"]["low"] > 0
        assert real["a"]["value"] > real["b"]["value"] - 0.2
    assert found_real / trials >= 0.9
    # One-sided 2.5% false positive rate, with binomial slack.
    assert found_null / trials <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / trials)


def test_calibration_of_calibrated_and_miscalibrated_scores():
    rng = np.random.default_rng(4)
    p = rng.beta(1, 8, 5000)
    y = (rng.random(5000) < p).astype(int)
    good = calibration(y, p, bins=10, strategy="quantile")
    bad = calibration(y, np.sqrt(p), bins=10, strategy="uniform")
    assert good["brier"] == pytest.approx(brier_score_loss(y, p))
    assert good["ece"] < 0.02 < bad["ece"]
    assert sum(b["count"] for b in good["bins"]) == 5000 and good["bins_used"] == 10
    counts = [b["count"] for b in good["bins"]]
    assert max(counts) - min(counts) <= 2  # quantile bins: equal counts
    for b in good["bins"]:
        assert b["observed_low"] <= b["observed"] <= b["observed_high"]
    small = calibration(y[:40], p[:40], bins=10)
    assert small["bins_used"] == 2  # readable at small n: at least 15 per bin


def test_describe_and_subgroups():
    rng = np.random.default_rng(5)
    n = 600
    frame = pd.DataFrame({
        "patient_id": rng.integers(0, 200, n).astype(str), "label": (rng.random(n) < 0.2).astype(int),
        "site_id": rng.integers(1, 3, n), "view": rng.choice(["CC", "MLO"], n), "age": rng.normal(60, 10, n),
    })
    frame["prob"] = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * frame["label"] - 1.5)))
    settings = BootstrapSettings(200, 0)
    result = describe(frame, 0.4, settings, specificities=(0.9,), sensitivities=(0.8,))
    assert set(result) == {"ci", "operating_points", "delong", "calibration"}
    assert result["ci"]["auc"]["low"] < result["ci"]["auc"]["value"] < result["ci"]["auc"]["high"]
    assert [p["name"] for p in result["operating_points"]] == ["sens@spec=0.9", "spec@sens=0.8"]
    assert result["delong"]["low"] < result["ci"]["auc"]["value"] < result["delong"]["high"]
    rows = subgroups(frame, 0.4, settings, level="image")
    assert {r["column"] for r in rows} == {"site_id", "view", "age_band"}
    for column in ("site_id", "view", "age_band"):
        assert sum(r["n"] for r in rows if r["column"] == column) == n
    assert all("view" != r["column"] for r in subgroups(frame, 0.4, settings, level="breast"))
    assert {r["value"] for r in rows if r["column"] == "age_band"} <= {"<50", "50-59", "60-69", "70+", "missing"}


def test_small_sample_warning():
    assert small_sample_warnings({"val": 25, "test": 2}) == [
        "the test split has only 2 cancer breast(s) (fewer than 20): its figures are uncertain; read the "
        "intervals, not the point values"
    ]


def test_intervals_hold_with_10_cancers():
    """Issue 20: 500 patients, 10 cancer breasts, true breast AUC 0.85 - the percentile
    bootstrap covered the AUC in 87.6% of trials. A seeded, fixed set of 300 trials; the
    bench (2,000 per size, also 20 and 40 cancers) is in the README."""
    (row,) = coverage(300, sizes=((10, 500),))
    for name in ("auc", "sensitivity", "specificity"):
        assert row[name]["rate"] >= MIN_COVERAGE, (name, row[name])


def test_no_interval_of_zero_width_and_none_without_a_reason():
    # 160 true negatives of 160, 10 flagged breasts all cancers: exact intervals, not [1, 1].
    labels = [0] * 160 + [1] * 10
    result = bootstrap(labels, [0.1] * 160 + [0.9] * 10, range(170), 0.5, BootstrapSettings(200, 0))
    for name in ("specificity", "precision", "sensitivity", "auc"):
        figure = result[name]
        assert figure["value"] == 1.0 and figure["high"] == 1.0 and 0.6 < figure["low"] < 1.0, (name, figure)
    assert result["specificity"]["low"] == pytest.approx(0.025 ** (1 / 160), abs=1e-6)  # Clopper-Pearson
    # A figure every resample gives the same value: no interval, and why.
    assert result["f1"]["low"] is None and result["f1"]["reason"].startswith("every resample gives 1.000")
    # One patient: nothing to estimate an interval from.
    one = bootstrap([0, 1], [0.2, 0.8], ["p", "p"], 0.5, BootstrapSettings(200, 0))
    for name in ("auc", "sensitivity", "f1"):
        assert one[name]["low"] is None and one[name]["reason"] == "fewer than 2 patients", one[name]


def test_proportions_of_correlated_units_are_wider():
    """Four images per patient that agree: the design effect widens the interval."""
    rng = np.random.default_rng(9)
    flags = np.repeat(rng.random(50) < 0.3, 4)
    patients = np.repeat(np.arange(50), 4)
    clustered = proportion_interval(flags, np.ones(200), patients, 0.95)
    independent = proportion_interval(flags, np.ones(200), np.arange(200), 0.95)
    assert clustered["design_effect"] > 3 and independent["design_effect"] < 1.1
    assert clustered["high"] - clustered["low"] > 1.5 * (independent["high"] - independent["low"])


def test_ranking_figures_are_summed_in_float64_at_rsna_scale():
    """55,000 float32 scores with many ties (~2% cancers): AUC and PR-AUC equal scikit-learn's
    to 1e-9, unweighted and under a patient resample given as float32 weights (float32 sums
    were ~6e-8 off here; issue 20 measured 6.8e-5 at RSNA's 54,706 images)."""
    from mammo.stats import Units, weighted_metrics

    rng = np.random.default_rng(2)
    n = 55_000
    y = (rng.random(n) < 0.021).astype(int)
    s = (np.round(np.clip(rng.normal(0.1 + 0.15 * y, 0.08), 0, 1) * 200) / 200).astype(np.float32)
    units = Units.of(y, s)
    resample = rng.multinomial(n, np.full(n, 1 / n))
    for weights in (np.ones(n), resample):
        got = weighted_metrics(units, weights[units.order].astype(np.float32)[None], None, which=("auc", "pr_auc"))
        assert got["auc"].dtype == np.float64 and got["pr_auc"].dtype == np.float64
        assert abs(got["auc"][0] - roc_auc_score(y, s, sample_weight=weights)) < 1e-9
        assert abs(got["pr_auc"][0] - average_precision_score(y, s, sample_weight=weights)) < 1e-9
    point = point_metrics(y, s)
    assert abs(point["auc"] - roc_auc_score(y, s)) < 1e-9
    assert abs(binary_metrics(y, s)["auc"] - roc_auc_score(y, s)) < 1e-9
    values = bootstrap(y, s, np.arange(n), None, BootstrapSettings(resamples=20, seed=0), which=("auc", "pr_auc"))
    assert abs(values["pr_auc"]["value"] - average_precision_score(y, s)) < 1e-9


def test_delong_with_one_cancer_or_one_non_cancer_is_not_estimable():
    """A variance component from one value is unknown, not 0: no standard error, no interval,
    the reason; two of each give one."""
    s = np.array([0.9, 0.4, 0.3, 0.2, 0.1, 0.35])
    one_cancer = delong(np.array([1, 0, 0, 0, 0, 0]), s)
    assert one_cancer["auc"] == pytest.approx(roc_auc_score([1, 0, 0, 0, 0, 0], s))
    assert (one_cancer["se"], one_cancer["low"], one_cancer["high"]) == (None, None, None)
    assert one_cancer["reason"] == "one cancer: DeLong's variance needs at least two of each"
    one_negative = delong(np.array([1, 1, 1, 1, 1, 0]), s)
    assert one_negative["low"] is None and one_negative["reason"].startswith("one non-cancer:")
    # Two cancer images of one patient: one cluster of positives.
    clustered = delong(np.array([1, 1, 0, 0, 0, 0]), s, clusters=["a", "a", "b", "c", "d", "e"])
    assert clustered["se"] is None and clustered["reason"].startswith("one patient with a cancer:")
    assert clustered["method"] == "delong-clustered"
    two = delong(np.array([1, 0, 0, 1, 0, 0]), s, clusters=["a", "b", "c", "d", "e", "f"])  # AUC 0.75
    assert two["se"] > 0 and two["reason"] is None and two["low"] < two["auc"] <= two["high"]
    none = delong(np.zeros(6, dtype=int), s)
    assert none["auc"] is None and none["reason"] == "needs cancers and non-cancers"
