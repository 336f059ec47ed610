"""Memorisation audit of synthetic images: the pure audit on hand-worked vectors and the image-audit tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privacy.feature_audit import nearest_neighbours
from privacy.image_audit import memorisation_audit, real_gap
from tools.image_audit import image_audit

TRAIN = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
HOLDOUT = np.array([[10.0, 10.0], [20.0, 20.0]])


def test_hand_worked_audit() -> None:
    # Rows 0-2 copy training rows 2, 0, 1; (30, 30) is nearer the holdout (20, 20): 14.14 vs 36.06 to the
    # training rows (10, 0) and (0, 10);
    # (5, 5) is sqrt(50) from (0, 0), (10, 0), (0, 10) and from the holdout (10, 10): a tie, counted half.
    synthetic = np.array([[0.0, 10.0], [0.0, 0.0], [10.0, 0.0], [30.0, 30.0], [5.0, 5.0]])
    audit = memorisation_audit(synthetic, TRAIN, HOLDOUT)
    np.testing.assert_array_equal(audit["nearest_train"][:3], [2, 0, 1])
    np.testing.assert_array_equal(audit["to_train"][:3], 0.0)
    np.testing.assert_allclose(audit["to_train"][3:], [np.hypot(20, 30), np.sqrt(50)])
    np.testing.assert_allclose(audit["to_holdout"], [10, np.hypot(10, 10), 10, np.hypot(10, 10), np.sqrt(50)])
    # Real gap: every training row is 10 from its nearest other one -> median 10, cut-off 0.1 x 10 = 1.
    assert audit["real_gap_median"] == pytest.approx(10.0)
    assert audit["copy_threshold"] == pytest.approx(1.0)
    np.testing.assert_allclose(audit["relative"], audit["to_train"] / 10.0)
    assert audit["exact_copy_share"] == pytest.approx(3 / 5)
    assert audit["near_copy_share"] == pytest.approx(3 / 5)
    dcr = audit["dcr"]
    assert dcr["share"] == pytest.approx((3 + 0 + 0.5) / 5)  # 0.7
    assert dcr["baseline"] == pytest.approx(3 / 5)
    assert dcr["excess"] == pytest.approx((0.7 - 0.6) / 0.4)
    # A point 0.5 from a training row is a near copy (below the cut-off 1) but not an exact one.
    near = memorisation_audit(np.array([[0.5, 0.0], [50.0, 50.0]]), TRAIN, HOLDOUT)
    assert (near["exact_copy_share"], near["near_copy_share"]) == (0.0, 0.5)
    # Standardising (embeddings) keeps exact copies exact.
    assert memorisation_audit(synthetic, TRAIN, HOLDOUT, standardise=True)["exact_copy_share"] == pytest.approx(0.6)


def test_neighbours_and_gap_edge_cases() -> None:
    idx, dist = nearest_neighbours(TRAIN, TRAIN, k=2)
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2])
    np.testing.assert_allclose(dist[:, 1], 10.0)
    dup = np.array([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    np.testing.assert_allclose(real_gap(dup), [0.0, 0.0, np.hypot(4, 4)])
    with pytest.raises(ValueError, match="at least 2 vectors"):
        real_gap(TRAIN[:1])
    with pytest.raises(ValueError, match=r"k=3 must lie in \[1, 2\]"):
        nearest_neighbours(TRAIN, TRAIN[:2], k=3)
    bad = np.array([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="synthetic vectors: 1 of 2 values are NaN"):
        memorisation_audit(bad, TRAIN, HOLDOUT)
    with pytest.raises(ValueError, match="one width"):
        memorisation_audit(np.zeros((2, 3)), TRAIN, HOLDOUT)


def _tree(root: Path, images: dict[str, list[np.ndarray]]) -> Path:
    for name, arrays in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(arrays):
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def _noise(rng: np.random.Generator, n: int, size: int = 8) -> list[np.ndarray]:
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    train = {"cat": _noise(rng, 4), "dog": _noise(rng, 4)}
    # 2 exact copies (cat/0, dog/3) and 3 fresh images, one of them 16 px (resized to 8 px).
    fresh = _noise(rng, 2) + _noise(rng, 1, size=16)
    synthetic = {"cat": [train["cat"][0], fresh[0]], "dog": [train["dog"][3], fresh[1], fresh[2]]}
    return {
        "train": _tree(tmp_path / "train", train),
        "synthetic": _tree(tmp_path / "synthetic", synthetic),
        "val": _tree(tmp_path / "val", {"cat": _noise(rng, 2), "dog": _noise(rng, 2)}),
        "test": _tree(tmp_path / "test", {"cat": _noise(rng, 2), "dog": _noise(rng, 2)}),
    }


def test_pixel_audit_finds_copies(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "audit"
    holdout = [str(folders["val"]), str(folders["test"])]
    image_audit(str(folders["synthetic"]), str(folders["train"]), holdout, str(out), image_size=8, pairs=3)
    report = json.loads((out / "audit.json").read_text())
    pixels = report["pixels"]
    assert pixels["exact_copy_share"] == pytest.approx(2 / 5)
    assert pixels["near_copy_share"] == pytest.approx(2 / 5)
    rows = {r["synthetic"]: r for r in pixels["images"]}
    assert rows["cat/0.png"]["nearest_train"] == "cat/0.png" and rows["cat/0.png"]["to_train"] == 0
    assert rows["dog/0.png"]["nearest_train"] == "dog/3.png" and rows["dog/0.png"]["same_class"]
    assert pixels["dcr"]["baseline"] == pytest.approx(8 / 16)
    assert report["embeddings"] is None
    assert (out / "closest_pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "audit.md").read_text()
    assert "| pixels | 5 | 8 | 8 | 40.0 | 40.0 |" in md
    assert not list(out.glob(".*tmp*"))


def test_embedding_audit_and_bad_inputs(folders: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train, holdout = rng.normal(size=(8, 6)), rng.normal(size=(6, 6))
    synthetic = np.concatenate([train[:3], rng.normal(size=(2, 6))])
    files = {}
    for name, emb in (("syn", synthetic), ("train", train), ("hold", holdout)):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], embeddings=emb.astype(np.float32), ids=np.array([f"{name}/{i}" for i in range(len(emb))]))
    args = (str(folders["synthetic"]), str(folders["train"]), str(folders["val"]))
    out = tmp_path / "audit"
    image_audit(*args, str(out), str(files["syn"]), str(files["train"]), str(files["hold"]), image_size=8)
    emb = json.loads((out / "audit.json").read_text())["embeddings"]
    assert emb["exact_copy_share"] == pytest.approx(3 / 5)
    assert [r["nearest_train"] for r in emb["images"][:3]] == ["train/0", "train/1", "train/2"]

    nan = synthetic.copy()
    nan[1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", embeddings=nan)
    with pytest.raises(
        ValueError, match=r"synthetic_embeddings .*nan\.npz 'embeddings': 1 of 30 values are NaN"
    ) as err:
        image_audit(*args, str(tmp_path / "x"), str(tmp_path / "nan.npz"), str(files["train"]), str(files["hold"]))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="give all three"):
        image_audit(*args, str(tmp_path / "x"), str(files["syn"]))

    _tree(tmp_path / "other", {"cat": _noise(rng, 1), "bird": _noise(rng, 1)})
    with pytest.raises(
        ValueError, match=r"synthetic \(.*other\) has class folders \['bird', 'cat'\] but real_train"
    ) as e:
        image_audit(str(tmp_path / "other"), *args[1:], str(tmp_path / "x"))
    assert "['cat', 'dog']" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "dog").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"synthetic: class folder.*hold no images"):
        image_audit(str(tmp_path / "empty"), *args[1:], str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_image_audit_through_the_cli(folders: dict[str, Path], tmp_path: Path) -> None:
    """`synthpriv image-audit SYNTHETIC REAL_TRAIN HOLDOUT OUT`: the same figures as the function (2 of 5 copies)."""
    from cli import main

    out = tmp_path / "cli-audit"
    holdout = f"[{folders['val']}, {folders['test']}]"
    main(["image-audit", str(folders["synthetic"]), str(folders["train"]), holdout, str(out), "--image_size", "8"])
    assert json.loads((out / "audit.json").read_text())["pixels"]["exact_copy_share"] == pytest.approx(2 / 5)


def test_real_train_ids_restrict_the_training_images(folders: dict[str, Path], tmp_path: Path) -> None:
    # The generator trained on cat/0 and dog/1 only (ids as a fit records them: '<source>/<class>/<file>').
    ids = tmp_path / "trained_ids.txt"
    ids.write_text("train0/cat/0.png\ntrain0/dog/1.png\n")
    out = tmp_path / "audit"
    image_audit(
        str(folders["synthetic"]),
        str(folders["train"]),
        str(folders["val"]),
        str(out),
        image_size=8,
        real_train_ids=str(ids),
    )
    pixels = json.loads((out / "audit.json").read_text())["pixels"]
    rows = {r["synthetic"]: r for r in pixels["images"]}
    assert {r["nearest_train"] for r in rows.values()} <= {"cat/0.png", "dog/1.png"}
    assert pixels["exact_copy_share"] == pytest.approx(1 / 5)  # dog/3's copy no longer counts: not trained on
    ids.write_text("train0/cat/0.png\ntrain0/cow/9.png\n")
    with pytest.raises(ValueError, match=r"real_train_ids: 1 of the 2 ids .* name no image of real_train"):
        image_audit(
            str(folders["synthetic"]),
            str(folders["train"]),
            str(folders["val"]),
            str(tmp_path / "o2"),
            image_size=8,
            real_train_ids=str(ids),
        )
    assert not (tmp_path / "o2").exists()
