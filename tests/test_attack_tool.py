"""`synthpriv attack` on saved logits: leave-one-out and explicit targets, reruns, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli import main
from privacy.membership import balanced_mask


def _shadow_file(path: Path, k: int = 8, n: int = 200, c: int = 5, leak: float = 2.0, seed: int = 0) -> Path:
    """Simulated shadow logits: a model is more confident on the examples it trained on (``leak``)."""
    rng = np.random.default_rng(seed)
    mask = balanced_mask(k, n, seed)
    labels = rng.integers(0, c, n)
    difficulty = rng.normal(0, 1, n)  # per-example offset: what makes LiRA's per-example Gaussians useful
    logits = rng.normal(size=(k, n, 2, c))
    boost = difficulty[None, :, None] + np.where(mask, leak, 0.0)[..., None]
    logits[
        np.arange(k)[:, None, None], np.arange(n)[None, :, None], np.arange(2)[None, None, :], labels[None, :, None]
    ] += boost
    ids = np.asarray([f"train0/c{labels[i]}/{i:04d}.png" for i in range(n)])
    np.savez(path, logits=logits, labels=labels, ids=ids, mask=mask)
    return path


def test_leave_one_out_finds_the_leak_and_reruns_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shadows = _shadow_file(tmp_path / "shadows.npz")
    main(["attack", str(shadows), str(tmp_path / "mia")])
    metrics = json.loads((tmp_path / "mia" / "metrics.json").read_text())["metrics"]
    assert metrics["online"]["auc"] > 0.75 and metrics["online"]["targets"] == 8
    assert metrics["global"]["auc"] > 0.55
    assert (tmp_path / "mia" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "mia" / "scores.npz") as scores:
        assert scores["online"].shape == (8, 200)
    stamp = (tmp_path / "mia" / "metrics.json").stat().st_mtime_ns
    main(["attack", str(shadows), str(tmp_path / "mia")])
    assert "nothing to do" in capsys.readouterr().out
    assert (tmp_path / "mia" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        main(["attack", str(shadows), str(tmp_path / "mia"), "--variance", "per_example"])


def test_no_leak_gives_chance_auc(tmp_path: Path) -> None:
    shadows = _shadow_file(tmp_path / "shadows.npz", leak=0.0, n=400)
    main(["attack", str(shadows), str(tmp_path / "mia"), "--attacks", "[online]"])
    auc = json.loads((tmp_path / "mia" / "metrics.json").read_text())["metrics"]["online"]["auc"]
    assert abs(auc - 0.5) < 0.05  # leave-one-out without the IN/OUT equalisation gave 0.437 here


def test_explicit_target_with_member_list(tmp_path: Path) -> None:
    shadows = _shadow_file(tmp_path / "shadows.npz", k=12)
    with np.load(shadows) as data:
        d = {k: data[k] for k in data.files}
    # model 0 is the target, models 2..11 (an even number) the references
    np.savez(tmp_path / "refs.npz", logits=d["logits"][2:], labels=d["labels"], ids=d["ids"], mask=d["mask"][2:])
    np.savez(tmp_path / "target.npz", logits=d["logits"][0], ids=d["ids"])
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][d["mask"][0]]))
    args = ["attack", str(tmp_path / "refs.npz"), "--target", str(tmp_path / "target.npz")]
    main([*args, "--members_file", str(tmp_path / "members.txt"), str(tmp_path / "mia")])
    metrics = json.loads((tmp_path / "mia" / "metrics.json").read_text())["metrics"]
    assert metrics["online"]["auc"] > 0.75 and metrics["online"]["members"] == int(d["mask"][0].sum())


def test_bad_inputs(tmp_path: Path) -> None:
    shadows = _shadow_file(tmp_path / "shadows.npz", k=4, n=20)
    with np.load(shadows) as data:
        d = {k: data[k] for k in data.files}
    np.savez(tmp_path / "badmask.npz", **{**d, "mask": d["mask"][:, :10]})
    with pytest.raises(
        ValueError, match=r"'mask' \(logits are for K=4, N=20\): expected shape \(4, 20\); found \(4, 10\)"
    ):
        main(["attack", str(tmp_path / "badmask.npz"), str(tmp_path / "a")])
    np.savez(tmp_path / "target.npz", logits=d["logits"][0][::-1], ids=d["ids"][::-1])
    (tmp_path / "members.txt").write_text("\n".join(d["ids"][:10]))
    base = [
        "attack",
        str(shadows),
        str(tmp_path / "b"),
        "--members_file",
        str(tmp_path / "members.txt"),
    ]
    with pytest.raises(ValueError, match="another order"):
        main([*base, "--target", str(tmp_path / "target.npz")])
    np.savez(tmp_path / "target3.npz", logits=d["logits"][0][..., :3], ids=d["ids"])
    with pytest.raises(ValueError, match="3 classes but the shadows have 5"):
        main([*base, "--target", str(tmp_path / "target3.npz")])
    np.savez(tmp_path / "target_ok.npz", logits=d["logits"][0], ids=d["ids"])
    (tmp_path / "non.txt").write_text("\n".join(d["ids"][5:15]))
    with pytest.raises(ValueError, match="both members and non-members"):
        main([*base, "--target", str(tmp_path / "target_ok.npz"), "--non_members_file", str(tmp_path / "non.txt")])
    np.savez(tmp_path / "one.npz", **{**d, "logits": d["logits"][:1], "mask": d["mask"][:1]})
    with pytest.raises(ValueError, match=r"even number K >= 2 of shadows.*got K=1"):
        main(["attack", str(tmp_path / "one.npz"), str(tmp_path / "c")])
    np.savez(tmp_path / "odd.npz", **{**d, "logits": d["logits"][:3], "mask": d["mask"][:3]})
    with pytest.raises(ValueError, match=r"even number.*K=3"):
        main(["attack", str(tmp_path / "odd.npz"), str(tmp_path / "e")])
    np.savez(tmp_path / "nolabels.npz", logits=d["logits"], ids=d["ids"], mask=d["mask"])
    with pytest.raises(ValueError, match="lacks \\['labels'\\]"):
        main(["attack", str(tmp_path / "nolabels.npz"), str(tmp_path / "d")])
