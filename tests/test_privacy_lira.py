"""LiRA and MIA metrics against a separate, loop-by-loop numpy implementation of the paper's formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from privacy.lira import (
    global_threshold,
    leave_one_out,
    lira_offline,
    lira_online,
    scaled_confidence,
    tckr_score,
)
from privacy.metrics import aop, attack_metrics, plot_roc, roc_curve, tpr_at_fpr


def _log_normal_pdf(x: float, mu: float, sd: float) -> float:
    return -0.5 * math.log(2 * math.pi * sd * sd) - (x - mu) ** 2 / (2 * sd * sd)


def _log_normal_cdf(x: float, mu: float, sd: float) -> float:
    return math.log(0.5 * (1 + math.erf((x - mu) / (sd * math.sqrt(2)))))


@pytest.fixture
def saved() -> dict[str, np.ndarray]:
    """Fixed 'saved logits': K=8 shadows, N=12 examples, Q=2 augmentations, C=4 classes, balanced mask."""
    rng = np.random.default_rng(3)
    k, n, q, c = 8, 12, 2, 4
    mask = np.zeros((k, n), dtype=bool)
    for j in range(n):
        mask[rng.permutation(k)[: k // 2], j] = True
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, q, c))
    logits[..., :] += np.where(mask[..., None, None], 1.5, 0.0) * np.eye(c)[labels][None, :, None, :]
    target = rng.normal(size=(n, q, c)) + 1.0 * np.eye(c)[labels][:, None, :]
    return {"mask": mask, "labels": labels, "logits": logits, "target": target}


def _direct_scaled_confidence(logits: np.ndarray, label: int) -> float:
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return math.log(p[label]) - math.log(sum(p[i] for i in range(len(p)) if i != label))


def test_scaled_confidence_matches_direct_formula(saved: dict[str, np.ndarray]) -> None:
    ours = scaled_confidence(saved["logits"], saved["labels"])
    assert ours.shape == (8, 12, 2)
    for k, n, q in [(0, 0, 0), (3, 5, 1), (7, 11, 0)]:
        expected = _direct_scaled_confidence(saved["logits"][k, n, q], saved["labels"][n])
        assert ours[k, n, q] == pytest.approx(expected, rel=1e-10)
    # Stable where the naive float32 formula is not: a confident logit of 200 gives a finite score.
    extreme = scaled_confidence(np.array([[200.0, 0.0, 0.0]]), np.array([0]))
    assert np.isfinite(extreme).all() and extreme[0] == pytest.approx(200 - math.log(2))


@pytest.mark.parametrize("variance", ["per_example", "fixed"])
def test_online_and_offline_lira_equal_the_papers_formulas(saved: dict[str, np.ndarray], variance: str) -> None:
    shadow = scaled_confidence(saved["logits"], saved["labels"])
    target = scaled_confidence(saved["target"], saved["labels"])
    mask = saved["mask"]
    k, n, q = shadow.shape
    # Independent implementation: one loop per example and augmentation.
    ins = {(j, a): [shadow[i, j, a] for i in range(k) if mask[i, j]] for j in range(n) for a in range(q)}
    outs = {(j, a): [shadow[i, j, a] for i in range(k) if not mask[i, j]] for j in range(n) for a in range(q)}
    if variance == "fixed":
        sd_in = np.std([v - np.median(vals) for vals in ins.values() for v in vals])
        sd_out = np.std([v - np.median(vals) for vals in outs.values() for v in vals])
    online, offline = [], []
    for j in range(n):
        per_aug_on, per_aug_off = [], []
        for a in range(q):
            mu_i, mu_o = np.median(ins[j, a]), np.median(outs[j, a])
            si = np.std(ins[j, a]) if variance == "per_example" else sd_in
            so = np.std(outs[j, a]) if variance == "per_example" else sd_out
            x = target[j, a]
            per_aug_on.append(_log_normal_pdf(x, mu_i, si) - _log_normal_pdf(x, mu_o, so))
            per_aug_off.append(_log_normal_cdf(x, mu_o, so))
        online.append(np.mean(per_aug_on))
        offline.append(np.mean(per_aug_off))
    np.testing.assert_allclose(lira_online(target, shadow, mask, variance), online, rtol=1e-9)
    np.testing.assert_allclose(lira_offline(target, shadow, mask, variance), offline, rtol=1e-7, atol=1e-12)


def test_tckr_global_pools_mean_and_variance(saved: dict[str, np.ndarray]) -> None:
    shadow = scaled_confidence(saved["logits"], saved["labels"])
    target = scaled_confidence(saved["target"], saved["labels"])
    scores = lira_online(target, shadow, saved["mask"], "tckr_global")
    ins, outs = shadow[saved["mask"]], shadow[~saved["mask"]]
    expected = [
        np.mean([_log_normal_pdf(x, ins.mean(), ins.std()) - _log_normal_pdf(x, outs.mean(), outs.std()) for x in row])
        for row in target
    ]
    np.testing.assert_allclose(scores, expected, rtol=1e-9)


def test_tckr_scores_reproduce_its_formulas() -> None:
    values = np.array([[0.7, 0.2, 0.1], [2.0, -1.0, 3.0]])
    labels = np.array([0, 2])
    stable = tckr_score(values, labels, "logit_stable")
    assert stable[0] == pytest.approx(math.log(0.7) - math.log(0.3))
    assert np.isnan(tckr_score(values, labels, "logit_unstable")[1])  # log(1 - 3) on a raw logit: TCKR's bug
    np.testing.assert_allclose(tckr_score(values, labels, "logits"), [0.5, 1.0])


def test_global_threshold_and_leave_one_out(saved: dict[str, np.ndarray]) -> None:
    shadow = scaled_confidence(saved["logits"], saved["labels"])
    np.testing.assert_allclose(global_threshold(shadow[0]), shadow[0].mean(axis=1))
    results = leave_one_out(shadow, saved["mask"], attack="online", variance="fixed")
    assert len(results) == 8
    aucs = [attack_metrics(s, m, fprs=(0.1,))["auc"] for s, m in results]
    assert np.mean(aucs) > 0.65  # members were given higher confidence in the fixture


def test_bad_inputs_are_clear_errors(saved: dict[str, np.ndarray]) -> None:
    shadow = scaled_confidence(saved["logits"], saved["labels"])
    with pytest.raises(ValueError, match="in_mask has shape"):
        lira_online(shadow[0], shadow, saved["mask"][:, :5])
    all_in = np.ones_like(saved["mask"])
    with pytest.raises(ValueError, match="no OUT shadow model"):
        lira_online(shadow[0], shadow, all_in)
    with pytest.raises(ValueError, match="expected 12 labels"):
        scaled_confidence(saved["logits"], saved["labels"][:3])
    with pytest.raises(ValueError, match=r"label 3 at example 1 lies outside \[0, 2\]"):
        scaled_confidence(np.zeros((2, 3)), np.array([0, 3]))


def test_metrics_against_sklearn_and_by_hand() -> None:
    rng = np.random.default_rng(0)
    members = rng.normal(1.0, 1.0, 500)
    others = rng.normal(0.0, 1.0, 500)
    scores = np.concatenate([members, others])
    is_member = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    result = attack_metrics(scores, is_member, fprs=(0.1, 0.01))
    assert result["auc"] == pytest.approx(roc_auc_score(is_member, scores), abs=1e-12)
    fpr, tpr = roc_curve(scores, is_member)
    best = max(((scores[is_member] >= t).mean() + (scores[~is_member] < t).mean()) / 2 for t in scores)
    assert result["balanced_accuracy"] == pytest.approx(best, abs=1e-9)
    fifty_first = np.sort(others)[-51]  # anything above it keeps at most 50 of 500 negatives: FPR 10 %
    assert result["tpr@0.1"] == pytest.approx((members > fifty_first).mean(), abs=1e-9)
    assert tpr_at_fpr(fpr, tpr, 0.0) <= result["tpr@0.01"] <= result["tpr@0.1"]


def test_tpr_at_an_unsupported_fpr_is_not_a_figure() -> None:
    # 10 non-members can measure FPR 0.1 (one false positive) but not 0.001 (needs 1,000).
    result = attack_metrics(np.arange(20.0), np.r_[np.zeros(10, bool), np.ones(10, bool)], fprs=(0.1, 0.001))
    assert result["tpr@0.001"] is None and result["unsupported_fprs"] == [0.001]
    assert result["tpr@0.1"] == 1.0


def test_metric_input_errors() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        attack_metrics(np.arange(3.0), np.ones(3, bool))
    with pytest.raises(ValueError, match="NaN"):
        attack_metrics(np.array([0.0, np.nan]), np.array([True, False]))


@pytest.mark.parametrize(
    ("accuracy", "auc", "expected"),
    [
        (97.52, 53.89, 83.95),  # CIFAR10 teacher (TCKR Table 2)
        (85.74, 62.80, 54.35),  # CIFAR100 student
        (93.96, 72.74, 44.40),  # Oxford-IIIT-Pet teacher
        (88.00, 79.44, 34.86),  # StanfordCars student
        (98.29, 60.32, 67.53),  # Imagenette teacher
    ],
)
def test_aop_reproduces_tckr_table(accuracy: float, auc: float, expected: float) -> None:
    assert aop(accuracy, auc) == pytest.approx(expected, abs=0.01)


def test_roc_plot_is_written(tmp_path: Path) -> None:
    fpr, tpr = roc_curve(np.arange(10.0), np.r_[np.zeros(5, bool), np.ones(5, bool)])
    path = plot_roc({"attack": (fpr, tpr)}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
