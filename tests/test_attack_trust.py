"""Issue 10: attack paths that used to return plausible but wrong figures now refuse or compute the right thing.

Each test states its expected value: worked out by hand, from the paper's definition, or by an independent
direct computation (loops, sklearn).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_line_error
from sklearn.metrics import roc_auc_score

from cli import main
from privacy.feature_audit import average_min_distance, dcr_share
from privacy.intervals import batched_figures, bootstrap_intervals
from privacy.lira import leave_one_out, lira_offline, lira_online, minimum_shadows, scaled_confidence
from privacy.membership import balanced_mask
from privacy.metrics import attack_metrics


def _shadows(path: Path, k: int = 8, n: int = 120, c: int = 4, q: int = 2, leak: float = 2.0, seed: int = 0, **extra):
    """Shadow logits where a model is more confident on its members; returns the saved arrays."""
    rng = np.random.default_rng(seed)
    mask = balanced_mask(k, n, seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(k, n, q, c))
    boost = rng.normal(0, 1, n)[None, :, None] + np.where(mask, leak, 0.0)[..., None]
    logits += boost[..., None] * np.eye(c)[labels][None, :, None, :]
    data = {"logits": logits, "labels": labels, "ids": np.asarray([f"x{i:04d}" for i in range(n)]), "mask": mask}
    data.update(extra)
    np.savez(path, **data)
    return data


def _target_attack(tmp_path: Path, d: dict, target_logits: np.ndarray | None = None, **extra) -> list[str]:
    """Model 0 as the target, models 2.. as references (``refs.npz``); returns the attack's argv up to options."""
    np.savez(tmp_path / "refs.npz", **{**d, "logits": d["logits"][2:], "mask": d["mask"][2:], **extra})
    np.savez(tmp_path / "target.npz", logits=d["logits"][0] if target_logits is None else target_logits, ids=d["ids"])
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][d["mask"][0]]))
    return [
        "attack",
        str(tmp_path / "refs.npz"),
        str(tmp_path / "mia"),
        "--target",
        str(tmp_path / "target.npz"),
        "--members_file",
        str(tmp_path / "members.txt"),
    ]


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


# ----------------------------------------------------------------------------------- 1. query views


def test_target_with_other_query_views_is_refused(tmp_path: Path) -> None:
    d = _shadows(tmp_path / "shadows.npz", q=2)
    np.savez(tmp_path / "target.npz", logits=d["logits"][0, :, 0], ids=d["ids"])  # (N, C): one view, shadows Q=2
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][d["mask"][0]]))
    args = ["attack", str(tmp_path / "shadows.npz"), str(tmp_path / "mia"), "--target", str(tmp_path / "target.npz")]
    with pytest.raises(ValueError, match=r"Q=1 query view.*queried with Q=2"):
        main([*args, "--members_file", str(tmp_path / "members.txt")])
    assert not (tmp_path / "mia" / "metrics.json").exists()
    # The library functions refuse it too: (N, 1) target scores against (K, N, 2) shadow scores.
    shadow = scaled_confidence(d["logits"], d["labels"])
    with pytest.raises(ValueError, match=r"same query views"):
        lira_online(shadow[0, :, :1], shadow[1:], d["mask"][1:])
    with pytest.raises(ValueError, match=r"same query views"):
        lira_offline(shadow[0, :, 0], shadow[1:], d["mask"][1:])


def test_single_view_target_is_accepted_for_single_view_shadows(tmp_path: Path) -> None:
    d = _shadows(tmp_path / "shadows.npz", k=10, q=1)
    args = _target_attack(tmp_path, d, d["logits"][0, :, 0])  # (N, C) with Q = 1: fine
    main([*args, "--attacks", "[online]"])
    assert _metrics(tmp_path / "mia")["metrics"]["online"]["auc"] > 0.7


# ----------------------------------------------------------------------------------- 3. minimum K


def test_minimum_shadows_table() -> None:
    # Worked out from the balanced mask: K/2 references per side with a target, K/2 - 1 under leave-one-out;
    # fixed / per_example need 2 per side, tckr_global 1.
    assert minimum_shadows("online", "fixed") == 4 and minimum_shadows("offline", "per_example") == 4
    assert minimum_shadows("online", "fixed", leave_one_out=True) == 6
    assert minimum_shadows("offline", "tckr_global") == 2 and minimum_shadows("online", "tckr_global", True) == 4
    assert minimum_shadows("rmia") == 2 and minimum_shadows("rmia", leave_one_out=True, rmia_offline=True) == 4


def test_one_reference_per_side_is_refused_not_scored(tmp_path: Path) -> None:
    # Offline LiRA with K = 2 plus a target: one OUT reference per example. Its residual around its own median
    # is exactly 0, so the old code divided by 1e-30 and ~40 % of the scores tied.
    d = _shadows(tmp_path / "shadows.npz", k=4, q=1)
    shadow = scaled_confidence(d["logits"], d["labels"])
    pair = balanced_mask(2, shadow.shape[1], 1)  # two references: each example IN for one, OUT for the other
    with pytest.raises(ValueError, match=r"needs at least 2 OUT reference models per example; this design gives 1"):
        lira_offline(shadow[0], shadow[2:], pair, "fixed")
    np.savez(tmp_path / "two.npz", **{**d, "logits": d["logits"][2:], "mask": pair})
    np.savez(tmp_path / "target.npz", logits=d["logits"][0], ids=d["ids"])
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][d["mask"][0]]))
    with pytest.raises(ValueError, match=r"offline \(variance fixed\) with a target needs K >= 4 .* got K=2"):
        main(
            [
                "attack",
                str(tmp_path / "two.npz"),
                str(tmp_path / "a"),
                "--target",
                str(tmp_path / "target.npz"),
                "--members_file",
                str(tmp_path / "members.txt"),
                "--attacks",
                "[offline]",
            ]
        )
    # Leave-one-out with K = 4: K/2 - 1 = 1 reference per side after the target is removed.
    with pytest.raises(ValueError, match=r"leave-one-out \(no target\) needs K >= 6 .* got K=4"):
        main(["attack", str(tmp_path / "shadows.npz"), str(tmp_path / "b")])
    with pytest.raises(ValueError, match=r"needs K >= 6"):
        leave_one_out(shadow, d["mask"], "online", "fixed")
    # tckr_global pools over examples and is defined with one reference per side.
    main(
        [
            "attack",
            str(tmp_path / "shadows.npz"),
            str(tmp_path / "c"),
            "--variance",
            "tckr_global",
            "--attacks",
            "[online]",
        ]
    )


def test_zero_spread_is_refused(tmp_path: Path) -> None:
    d = _shadows(tmp_path / "shadows.npz", k=6, q=1)
    shadow = scaled_confidence(d["logits"], d["labels"])
    twins = shadow.copy()
    twins[:] = shadow[0]  # identical models: every reference agrees exactly, spread 0
    with pytest.raises(ValueError, match="zero spread"):
        lira_online(shadow[0], twins, d["mask"], "per_example")


# ----------------------------------------------------------------------------------- 4. non-finite values


def test_diverged_shadow_is_named_not_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _shadows(tmp_path / "shadows.npz")
    logits = d["logits"].copy()
    logits[3, 17:, :, :] = np.nan  # model 3 diverged from example 17 on
    np.savez(tmp_path / "nan.npz", **{**d, "logits": logits})
    with pytest.raises(ValueError, match=r"'logits'.* NaN or infinite; the first is nan at model 3, example 17"):
        main(["attack", str(tmp_path / "nan.npz"), str(tmp_path / "a")])
    message = one_line_error(monkeypatch, ["attack", str(tmp_path / "nan.npz"), str(tmp_path / "b")])
    assert "nan.npz" in message and "model 3, example 17" in message
    target = d["logits"][0].copy()
    target[5, 1, 2] = np.inf
    np.savez(tmp_path / "target.npz", logits=target, ids=d["ids"])
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][d["mask"][0]]))
    with pytest.raises(ValueError, match=r"--target .*target.npz 'logits'.* example 5, view 1, class 2"):
        main(
            [
                "attack",
                str(tmp_path / "shadows.npz"),
                str(tmp_path / "c"),
                "--target",
                str(tmp_path / "target.npz"),
                "--members_file",
                str(tmp_path / "members.txt"),
            ]
        )


def test_audits_refuse_non_finite_rows_instead_of_reading_the_last_row() -> None:
    rng = np.random.default_rng(0)
    train, holdout = rng.normal(size=(50, 6)), rng.normal(size=(30, 6))
    copies = train[:20].copy()
    assert dcr_share(copies, train, holdout)["share"] == 1.0  # exact copies: nearer a training record, always
    assert average_min_distance(copies, train) == 0.0
    copies[4, 2] = np.nan  # faiss returned index -1 for this row, which numpy read as the last training row
    with pytest.raises(ValueError, match=r"anonymised vectors: 1 of 120 values .* row 4, feature 2"):
        dcr_share(copies, train, holdout)
    with pytest.raises(ValueError, match=r"anonymised vectors: .* row 4"):
        average_min_distance(copies, train)
    bad_holdout = holdout.copy()
    bad_holdout[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"real holdout vectors: .* row 0, feature 0"):
        dcr_share(train[:5], train, bad_holdout)


# ----------------------------------------------------------------------------------- 9. intervals


def test_batched_figures_equal_the_roc_definition() -> None:
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(30, 200))
        scores = np.round(rng.normal(size=n), 1)  # many exact ties
        member = rng.random(n) < 0.4
        if member.all() or not member.any():
            continue
        direct = attack_metrics(scores, member, fprs=(0.1, 0.05))
        batch = batched_figures(scores[None], member[None], (0.1, 0.05))
        assert batch["auc"][0] == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
        for key in ("tpr@0.1", "tpr@0.05"):
            if direct[key] is not None:
                assert batch[key][0] == pytest.approx(direct[key], abs=1e-12)


def test_bootstrap_interval_of_a_perfect_attack_is_a_point() -> None:
    scores = np.r_[np.linspace(1, 2, 50), np.linspace(-2, -1, 150)]
    member = np.r_[np.ones(50, bool), np.zeros(150, bool)]
    # Members all score above every non-member, in every resample: AUC 1 and TPR 1 at 1 % FPR (150 negatives
    # allow one false positive), so each interval is [1, 1].
    ci = bootstrap_intervals(scores, member, (0.01,), resamples=200, seed=0)
    assert ci["auc_ci95"] == [1.0, 1.0] and ci["tpr@0.01_ci95"] == [1.0, 1.0]


def test_bootstrap_auc_interval_matches_the_hanley_mcneil_standard_error() -> None:
    rng = np.random.default_rng(2)
    n1 = n0 = 1000
    scores = np.r_[rng.normal(0.4, 1, n1), rng.normal(0, 1, n0)]
    member = np.r_[np.ones(n1, bool), np.zeros(n0, bool)]
    auc = roc_auc_score(member, scores)
    # Hanley & McNeil (1982): SE^2 = (A(1-A) + (n1-1)(Q1-A^2) + (n0-1)(Q2-A^2)) / (n1 n0), Q1 = A/(2-A), Q2 = 2A^2/(1+A)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0))
    low, high = bootstrap_intervals(scores, member, (0.1,), resamples=1000, seed=0)["auc_ci95"]
    assert low < auc < high
    assert 0.85 < (high - low) / (2 * 1.96 * se) < 1.15
    again = bootstrap_intervals(scores, member, (0.1,), resamples=1000, seed=0)["auc_ci95"]
    assert again == [low, high]  # seeded


def test_attack_metrics_carry_intervals_and_flag_unsupported_fprs(tmp_path: Path) -> None:
    d = _shadows(tmp_path / "shadows.npz", k=12, n=300)
    main(_target_attack(tmp_path, d))
    record = _metrics(tmp_path / "mia")
    assert record["format"] == 2 and "bootstrap" in record["intervals"]["method"]
    online = record["metrics"]["online"]
    # 173 non-members (300 minus model 0's 127 members): FPR 0.1 and 0.01 are measurable (they need at least 10
    # and 100), 0.001 and below are not (they need 1,000 and more).
    assert online["non_members"] == int((~d["mask"][0]).sum()) == 173
    assert online["unsupported_fprs"] == [0.001, 0.0001, 1e-05]
    assert online["tpr@0.001"] is None and online["tpr@0.001_ci95"] is None
    for key in ("auc", "tpr@0.1", "tpr@0.01"):
        low, high = online[f"{key}_ci95"]
        assert low <= online[key] <= high
    with np.load(tmp_path / "mia" / "scores.npz") as saved:
        expected_auc = roc_auc_score(saved["is_member"], saved["online"])
    assert online["auc"] == pytest.approx(expected_auc, abs=1e-12)


def test_leave_one_out_intervals_and_old_format_results_are_recomputed(tmp_path: Path) -> None:
    _shadows(tmp_path / "shadows.npz", k=8, n=200)
    main(
        ["attack", str(tmp_path / "shadows.npz"), str(tmp_path / "mia"), "--attacks", "[online]", "--resamples", "200"]
    )
    record = _metrics(tmp_path / "mia")
    online = record["metrics"]["online"]
    assert online["targets"] == 8 and online["auc_ci95"][0] < online["auc"] < online["auc_ci95"][1]
    # An older synthpriv wrote the same settings without format and intervals: recomputed, old file kept.
    old = {"settings": {k: record["settings"][k] for k in ("inputs", "attacks", "variance")}, "metrics": {}}
    (tmp_path / "mia" / "metrics.json").write_text(json.dumps(old))
    main(
        ["attack", str(tmp_path / "shadows.npz"), str(tmp_path / "mia"), "--attacks", "[online]", "--resamples", "200"]
    )
    assert _metrics(tmp_path / "mia")["metrics"]["online"] == online
    assert json.loads((tmp_path / "mia" / "metrics.format1.json").read_text()) == old


# ----------------------------------------------------------------------------------- 11. RMIA in the CLI


def _brute_rmia(target_p: np.ndarray, ref_p: np.ndarray, population: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """RMIA's definition, one pair (x, z) at a time (Zarifzadeh et al. 2024, eq. 4), online: p_ref = mean."""
    p_ref = ref_p.mean(axis=0)
    out = []
    for x in range(len(target_p)):
        lr_x = target_p[x] / p_ref[x]
        out.append(sum(lr_x / (target_p[z] / p_ref[z]) > gamma for z in population) / len(population))
    return np.asarray(out)


def test_rmia_from_the_cli_equals_its_definition(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 160
    d = _shadows(tmp_path / "full.npz", k=10, n=n, q=2)
    members = d["mask"][0]
    non_members = np.flatnonzero(~members)
    population = np.zeros(n, bool)
    population[rng.choice(non_members, 30, replace=False)] = True
    main([*_target_attack(tmp_path, d, population=population), "--resamples", "200"])
    record = _metrics(tmp_path / "mia")["metrics"]
    assert set(record) == {"online", "offline", "global", "rmia"}  # rmia joins by default with a population
    # Independent computation: softmax probabilities of the true class averaged over the two views.
    probs = np.exp(d["logits"] - d["logits"].max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True))[:, np.arange(n), :, d["labels"]].transpose(1, 0, 2)  # (K, N, Q)
    probs = probs.mean(axis=2)
    scores = _brute_rmia(probs[0], probs[2:], np.flatnonzero(population))
    evaluated = ~population  # the population is never evaluated
    assert record["rmia"]["members"] == members.sum() and record["rmia"]["non_members"] == (~members).sum() - 30
    assert record["rmia"]["auc"] == pytest.approx(roc_auc_score(members[evaluated], scores[evaluated]), abs=1e-12)
    # Leave-one-out RMIA runs as well (each shadow's population = the design's population it did not train on).
    main(["attack", str(tmp_path / "refs.npz"), str(tmp_path / "loo"), "--attacks", "[rmia]", "--resamples", "100"])
    assert _metrics(tmp_path / "loo")["metrics"]["rmia"]["targets"] == 8


def test_rmia_population_errors(tmp_path: Path) -> None:
    d = _shadows(tmp_path / "shadows.npz", k=8, n=60)
    np.savez(tmp_path / "target.npz", logits=d["logits"][0], ids=d["ids"])
    members = d["ids"][d["mask"][0]]
    (tmp_path / "members.txt").write_text("\n".join(members))
    base = [
        "attack",
        str(tmp_path / "shadows.npz"),
        "--target",
        str(tmp_path / "target.npz"),
        "--members_file",
        str(tmp_path / "members.txt"),
        "--attacks",
        "[rmia]",
    ]
    with pytest.raises(ValueError, match="needs a population of known non-members"):
        main([*base, str(tmp_path / "a")])
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="lists no ids"):
        main([*base, str(tmp_path / "b"), "--population_file", str(tmp_path / "empty.txt")])
    (tmp_path / "unknown.txt").write_text("nobody\n")
    with pytest.raises(ValueError, match="not among the examples"):
        main([*base, str(tmp_path / "c"), "--population_file", str(tmp_path / "unknown.txt")])
    (tmp_path / "members_pop.txt").write_text(members[0] + "\n")
    with pytest.raises(ValueError, match="population holds 1 of the target's members"):
        main([*base, str(tmp_path / "d"), "--population_file", str(tmp_path / "members_pop.txt")])
    non = d["ids"][~d["mask"][0]]
    (tmp_path / "non.txt").write_text("\n".join(non))
    (tmp_path / "pop.txt").write_text(non[0] + "\n")
    with pytest.raises(ValueError, match="kept apart from the evaluated examples"):
        main(
            [
                *base,
                str(tmp_path / "e"),
                "--population_file",
                str(tmp_path / "pop.txt"),
                "--non_members_file",
                str(tmp_path / "non.txt"),
            ]
        )


# ----------------------------------------------------------------------------------- 12. one-line errors


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"labels": "float"}, "class labels must be integers; found dtype float64"),
        ({"labels": "str"}, "class labels must be integers; found dtype <U"),
        ({"labels": "range"}, "label 9 at example 0 lies outside [0, 3]"),
        ({"ids": "dup"}, "'x0000' appears more than once"),
        ({"mask": "float"}, "expected a boolean (or 0/1) mask; found dtype float64"),
        ({"drop": "ids"}, "lacks ['ids']"),
        ({"k": 4}, "needs K >= 6 shadow models; got K=4"),
    ],
)
def test_bad_shadow_files_end_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, expected: str
) -> None:
    d = _shadows(tmp_path / "ok.npz", n=20)
    if change.get("labels") == "float":
        d["labels"] = d["labels"].astype(float)
    elif change.get("labels") == "str":
        d["labels"] = d["labels"].astype(str)
    elif change.get("labels") == "range":
        d["labels"] = d["labels"].copy()
        d["labels"][0] = 9
    if change.get("ids") == "dup":
        d["ids"] = d["ids"].copy()
        d["ids"][1] = d["ids"][0]
    if change.get("mask") == "float":
        d["mask"] = d["mask"] * 0.5
    if "drop" in change:
        del d[change["drop"]]
    if "k" in change:
        d["logits"], d["mask"] = d["logits"][: change["k"]], d["mask"][: change["k"]]
    np.savez(tmp_path / "bad.npz", **d)
    message = one_line_error(monkeypatch, ["attack", str(tmp_path / "bad.npz"), str(tmp_path / "out")])
    assert expected in message
    assert not (tmp_path / "out" / "metrics.json").exists()
