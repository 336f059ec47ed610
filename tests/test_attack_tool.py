"""`synthpriv attack` on saved logits: leave-one-out and explicit targets, reruns, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_line_error

from cli import main
from privacy.membership import balanced_mask
from tools.files import file_sha256


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


# --------------------------------------------------------------------------- --members_via (indirect targets)


def _run_folder(root: Path, name: str, trained: list[str], checkpoint: bool = True) -> Path:
    """A fake run folder: ``trained_ids.txt`` and (``checkpoint``) a placeholder ``checkpoints/last.ckpt``."""
    run = root / "runs" / "tckr" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "trained_ids.txt").write_text("".join(f"{i}\n" for i in trained))
    if checkpoint:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"placeholder")
    return run


@pytest.fixture
def indirect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A teacher trained on the members (model 0 of a simulated ensemble), a student trained on synthetic ids.

    Without real models: the shadows-vs-target config check is recorded instead of run, and the student's
    logits are those of model 0 (a student that leaks like its teacher). Models 2..11 are the references.
    """
    _shadow_file(tmp_path / "all.npz", k=12)
    with np.load(tmp_path / "all.npz") as data:
        d = {k: data[k] for k in data.files}
    (tmp_path / "shadows").mkdir()
    shadows = tmp_path / "shadows" / "shadows.npz"
    np.savez(shadows, logits=d["logits"][2:], labels=d["labels"], ids=d["ids"], mask=d["mask"][2:])
    members = [str(i) for i in d["ids"][d["mask"][0]]]
    (tmp_path / "members.txt").write_text("\n".join(members))
    teacher = _run_folder(tmp_path, "teacher", [*members, "train0/c0/extra.png"])
    student = _run_folder(tmp_path, "student", [f"synthetic/c{i % 5}/{i:05d}.png" for i in range(60)])
    controls: list[bool] = []

    def shadow_check(shadows_run: Path, target: Path, control: bool = False) -> list[str]:
        controls.append(control)
        return []

    def target_logits(checkpoint: str, shadows_file: str, out_file: Path, device: str = "cpu") -> Path:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out_file, logits=d["logits"][0], ids=d["ids"])
        return out_file

    monkeypatch.setattr("tools.shadow_check.check_shadows_match_target", shadow_check)
    monkeypatch.setattr("tools.target_logits.compute_target_logits", target_logits)
    args = ["attack", str(shadows), "--members_file", str(tmp_path / "members.txt"), "--attacks", "[online]"]
    return {
        "args": args,
        "members": members,
        "teacher": teacher,
        "student": student / "checkpoints" / "last.ckpt",
        "controls": controls,
    }


def test_members_via_attacks_a_student_with_its_teachers_members(
    indirect: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mia"
    argv = [*indirect["args"], str(out), "--target_checkpoint", str(indirect["student"])]
    main([*argv, "--members_via", str(indirect["teacher"])])
    record = json.loads((out / "metrics.json").read_text())
    teacher = indirect["teacher"].resolve()
    assert record["format"] == 2 and record["members_via"] == str(teacher)
    assert record["settings"]["members_via"] == {
        "run": str(teacher),
        "trained_ids_sha256": file_sha256(teacher / "trained_ids.txt"),
    }
    n = len(indirect["members"])  # 91: model 0's share of the balanced design
    assert record["metrics"]["online"]["members"] == n and record["metrics"]["online"]["auc"] > 0.75
    # the student trained on other (synthetic) examples by design: its data is compared like a control's
    assert indirect["controls"] == [True]
    # a checkpoint inside the teacher's run names the same run: same settings, nothing to do
    main([*argv, "--members_via", str(indirect["teacher"] / "checkpoints" / "last.ckpt")])
    assert "nothing to do" in capsys.readouterr().out
    # the teacher's record changed: other inputs, not silently reused
    with (indirect["teacher"] / "trained_ids.txt").open("a") as handle:
        handle.write("train0/c1/another.png\n")
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        main([*argv, "--members_via", str(indirect["teacher"])])
    # without members_via the record says so
    main([*indirect["args"], str(tmp_path / "direct"), "--target", str(out / "target_logits.npz")])
    assert json.loads((tmp_path / "direct" / "metrics.json").read_text())["members_via"] is None


def test_student_without_members_via_is_refused(indirect: dict, tmp_path: Path) -> None:
    argv = [*indirect["args"], str(tmp_path / "mia"), "--target_checkpoint", str(indirect["student"])]
    n = len(indirect["members"])
    with pytest.raises(ValueError, match=rf"trained on 60 examples .*; {n} of the {n} members in .*members\.txt"):
        main(argv)
    assert indirect["controls"] == [False]
    assert not (tmp_path / "mia" / "metrics.json").exists()


def test_members_via_run_missing_members_is_refused(
    indirect: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    partial = _run_folder(tmp_path, "partial", indirect["members"][5:], checkpoint=False)
    argv = [*indirect["args"], str(tmp_path / "mia"), "--target_checkpoint", str(indirect["student"])]
    n = len(indirect["members"])
    with pytest.raises(ValueError, match=rf"--members_via .*partial .*trained on {n - 5} examples .*; 5 of the {n} "):
        main([*argv, "--members_via", str(partial)])
    message = one_line_error(monkeypatch, [*argv, "--members_via", str(partial)])
    assert f"5 of the {n} members" in message
    assert not (tmp_path / "mia" / "metrics.json").exists()


def test_direct_target_with_members_via_is_refused(
    indirect: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a second teacher on the same members: it trained on them itself, so it is a direct target
    twin = _run_folder(tmp_path, "twin", [*indirect["members"][:40], "train0/c2/other.png"])
    argv = [*indirect["args"], str(tmp_path / "mia"), "--target_checkpoint", str(twin / "checkpoints" / "last.ckpt")]
    n = len(indirect["members"])
    with pytest.raises(ValueError, match=rf"trained directly on 40 of the {n} members .* without --members_via"):
        main([*argv, "--members_via", str(indirect["teacher"])])
    message = one_line_error(monkeypatch, [*argv, "--members_via", str(indirect["teacher"])])
    assert "twin" in message and "direct target" in message
    assert not (tmp_path / "mia" / "metrics.json").exists()


def test_members_via_needs_a_target_checkpoint_and_no_control(
    indirect: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "target.npz").write_bytes(b"never read: refused before")
    via = ["--members_via", str(indirect["teacher"])]
    saved = [*indirect["args"], str(tmp_path / "a"), "--target", str(tmp_path / "target.npz"), *via]
    assert "give --target_checkpoint" in one_line_error(monkeypatch, saved)
    with pytest.raises(ValueError, match="give --target_checkpoint"):
        main([*indirect["args"], str(tmp_path / "b"), *via])  # leave-one-out over the shadows
    control = [*indirect["args"], str(tmp_path / "c"), "--target_checkpoint", str(indirect["student"]), *via]
    assert "contradict" in one_line_error(monkeypatch, [*control, "--control", "true"])
    with pytest.raises(FileNotFoundError, match=r"--members_via: .*missing does not exist"):
        main([*control[:-1], str(tmp_path / "missing")])
    assert indirect["controls"] == [] and not any((tmp_path / x).exists() for x in "abc")
