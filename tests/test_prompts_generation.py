"""PromptDataModule (TCKR's prompt schedule) and SyntheticImageWriter through cli.main, with a test-only generator."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_helpers import run_cli_process, tiny_dataset
from lightning import LightningModule
from lightning.pytorch.callbacks import Callback

from cli import main
from datamodules.prompts import PromptDataModule, item_seed, schedule_size

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = {"ant": ["red ant", "black ant"], "bee": ["a bee"], "cow": ["cow one", "cow two", "cow three"]}


class TinyGenerator(LightningModule):
    """Test fixture, not product code: turns (prompt, seed) into a seeded noise image, following the
    SyntheticImageWriter predict_step contract."""

    def __init__(
        self,
        num_classes: int = 0,
        class_names: list[str] | None = None,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 3,
        height: int = 8,
        width: int = 8,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        images = []
        for prompt, seed in zip(batch["prompt"], batch["seed"].tolist()):
            gen = torch.Generator().manual_seed(int(seed) + len(prompt))
            images.append(torch.rand(3, self.hparams.height, self.hparams.width, generator=gen))
        return {**batch, "images": torch.stack(images)}


class Crash(Callback):
    """Simulates a kill after the first batch has been written."""

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated kill")


def _captions(path: Path, captions: dict[str, list[str]] = CAPTIONS) -> Path:
    rows = [
        {"id": f"{name}/{i}", "path": f"{name}/{i}.png", "class": name, "caption": cap}
        for name, caps in captions.items()
        for i, cap in enumerate(caps)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _dm(tmp_path: Path, **kwargs: Any) -> PromptDataModule:
    args = {
        "captions": str(_captions(tmp_path / "captions.jsonl")),
        "class_names": ["ant", "bee", "cow"],
        "real_train_size": 10,
        "cardinality": 1.0,
        "seed": 3,
        **kwargs,
    }
    return PromptDataModule(**args)


def test_schedule_counts_and_cycling(tmp_path: Path) -> None:
    # N = 10, C = 3: ⌊10/3⌋ = 3 per class, the 1 left over goes to the first class (ant) -> 4, 3, 3.
    dm = _dm(tmp_path)
    assert len(dm.items) == 10 and dm.num_classes == 3
    assert Counter(i["label"] for i in dm.items) == {0: 4, 1: 3, 2: 3}
    prompts = Counter(i["prompt"] for i in dm.items)
    assert prompts == {
        "ant: red ant": 2,
        "ant: black ant": 2,
        "bee: a bee": 3,
        "cow: cow one": 1,
        "cow: cow two": 1,
        "cow: cow three": 1,
    }
    assert [i["index"] for i in dm.items] == list(range(10))
    assert all(i["seed"] == item_seed(3, i["index"]) for i in dm.items)
    assert [i["label"] for i in dm.items] != sorted(i["label"] for i in dm.items)  # shuffled


def test_rounding_prompt_types_and_determinism(tmp_path: Path) -> None:
    assert schedule_size(0.25, 10) == 3  # 2.5 rounds half up
    assert schedule_size(0.24, 10) == 2
    assert schedule_size(20, 7) == 140
    a, b = _dm(tmp_path), _dm(tmp_path)
    assert a.items == b.items and a.schedule_sha256() == b.schedule_sha256()
    assert _dm(tmp_path, seed=4).items != a.items
    caption_only = _dm(tmp_path, prompt_type="caption")
    assert [i["prompt"] for i in caption_only.items] == [i["prompt"].split(": ", 1)[1] for i in a.items]
    template = PromptDataModule(
        class_names=["x", "y"], real_train_size=3, prompt_type="template", template="{class_name}!"
    )
    assert sorted(i["prompt"] for i in template.items) == ["x!", "x!", "y!"]


def test_seeds_do_not_depend_on_batch_size(tmp_path: Path) -> None:
    def items(batch_size: int) -> list[tuple[int, str, int, int]]:
        dm = _dm(tmp_path, batch_size=batch_size)
        out = []
        for batch in dm.predict_dataloader():
            out += zip(batch["index"].tolist(), batch["prompt"], batch["label"].tolist(), batch["seed"].tolist())
        return out

    assert items(1) == items(4) == items(3)


def test_skip_and_existing(tmp_path: Path) -> None:
    dm = _dm(tmp_path)
    folder = tmp_path / "out"
    (folder / "ant").mkdir(parents=True)
    first_ant = next(i["index"] for i in dm.items if i["label"] == 0)
    (folder / dm.relative_path(first_ant)).write_bytes(b"x")
    assert dm.existing_indices(folder) == {first_ant}
    dm.skip({first_ant})
    assert [i["index"] for i in dm.pending()] == [i for i in range(10) if i != first_ant]


def test_bad_inputs(tmp_path: Path) -> None:
    # captions name ant/bee/cow, the real dataset ant/bee/dog: both lists in the message
    both = r"classes \['ant', 'bee', 'cow'\] but the real dataset's class_names are \['ant', 'bee', 'dog'\]"
    with pytest.raises(ValueError, match=both):
        _dm(tmp_path, class_names=["ant", "bee", "dog"])
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="cardinality: expected a positive number"):
            _dm(tmp_path, cardinality=bad)
    with pytest.raises(ValueError, match="rounds to 0"):
        _dm(tmp_path, cardinality=0.01)
    real = tiny_dataset(tmp_path / "real", {"ant": 2, "bee": 2, "dog": 2})
    with pytest.raises(ValueError, match="dog"):
        _dm(tmp_path, class_names=None, real_train_size=None, real_train_root=str(real / "train"))
    ok = tiny_dataset(tmp_path / "ok", {"ant": 2, "bee": 1, "cow": 2})
    counted = _dm(tmp_path, class_names=None, real_train_size=None, real_train_root=str(ok / "train"))
    assert counted.real_train_size == 5 and counted.class_names == ["ant", "bee", "cow"] and len(counted.items) == 5
    ids = tmp_path / "trained_ids.txt"
    ids.write_text("train0/ant/0.png\ntrain0/bee/0.png\n\ntrain0/cow/1.png\n")
    from_ids = _dm(tmp_path, real_train_size=None, real_train_ids=str(ids), cardinality=2.0)
    assert from_ids.real_train_size == 3 and len(from_ids.items) == 6
    with pytest.raises(ValueError, match="exactly one of real_train_size"):
        _dm(tmp_path, real_train_ids=str(ids))
    ids.write_text("\n")
    with pytest.raises(ValueError, match=r"real_train_ids: .* lists no ids"):
        _dm(tmp_path, real_train_size=None, real_train_ids=str(ids))


def _config(tmp_path: Path, out: Path, crash: bool = False, guidance: float = 2.0, batch_size: int = 3) -> Path:
    callbacks: list[dict[str, Any]] = [{"class_path": "SyntheticImageWriter", "init_args": {"output_dir": str(out)}}]
    if crash:
        callbacks.append({"class_path": "test_prompts_generation.Crash"})
    config = {
        "seed_everything": 1,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_progress_bar": True,
            "enable_model_summary": False,
            "callbacks": callbacks,
        },
        "model": {"class_path": "test_prompts_generation.TinyGenerator", "init_args": {"guidance_scale": guidance}},
        "data": {
            "class_path": "PromptDataModule",
            "init_args": {
                "captions": str(_captions(tmp_path / "captions.jsonl")),
                "class_names": ["ant", "bee", "cow"],
                "real_train_size": 10,
                "cardinality": 1.0,
                "seed": 3,
                "batch_size": batch_size,
            },
        },
    }
    path = tmp_path / f"gen-{crash}-{guidance}-{batch_size}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _predict(tmp_path: Path, config: Path, name: str) -> None:
    main(
        [
            "predict",
            "--config",
            str(config),
            "--run.root",
            str(tmp_path / "runs"),
            "--run.study",
            "g",
            "--run.name",
            name,
        ]
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "generation.json"
    }


def test_predict_layout_rerun_and_resume(tmp_path: Path) -> None:
    full = tmp_path / "full"
    _predict(tmp_path, _config(tmp_path, full), "full")
    pngs = sorted(p.relative_to(full).as_posix() for p in full.rglob("*.png"))
    assert len(pngs) == 10 and {p.split("/")[0] for p in pngs} == {"ant", "bee", "cow"}
    rows = [json.loads(line) for line in (full / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    assert all(r["file"] == f"{r['class']}/{r['index']:06d}.png" and (full / r["file"]).is_file() for r in rows)
    assert all(r["seed"] == item_seed(3, r["index"]) and r["guidance"] == 2.0 and r["steps"] == 3 for r in rows)
    assert all(r["prompt"].startswith(r["class"] + ": ") for r in rows)
    config = json.loads((full / "generation.json").read_text())
    assert config["complete"] is True and config["written"] == 10 and config["base_seed"] == 3
    assert config["guidance_scale"] == 2.0 and len(config["prompts_sha256"]) == 64
    assert not list(full.rglob(".*"))  # no temporary files left

    # rerun: every image exists, nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in full.rglob("*.png")}
    _predict(tmp_path, _config(tmp_path, full), "again")
    assert {p: p.stat().st_mtime_ns for p in full.rglob("*.png")} == stamps

    # killed after the first batch, then rerun (other batch size): the same files as the uninterrupted run
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="simulated kill"):
        _predict(tmp_path, _config(tmp_path, part, crash=True, batch_size=4), "killed")
    assert len(list(part.rglob("*.png"))) == 4 and not (part / "manifest.jsonl").exists()
    _predict(tmp_path, _config(tmp_path, part, batch_size=2), "resumed")
    assert _files(part) == _files(full)

    # another configuration: refused, naming the key; nothing overwritten
    with pytest.raises(FileExistsError, match=r"guidance_scale 2\.0 -> 3\.0"):
        _predict(tmp_path, _config(tmp_path, full, guidance=3.0), "other")
    assert {p: p.stat().st_mtime_ns for p in full.rglob("*.png")} == stamps


def test_images_without_configuration_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "ant").mkdir(parents=True)
    (out / "ant" / "000000.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match=r"no generation\.json"):
        _predict(tmp_path, _config(tmp_path, out), "stray")
    assert (out / "ant" / "000000.png").read_bytes() == b"not ours"


def test_ddp_writes_every_index_once(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    config = _config(tmp_path, out, batch_size=2)
    # The test-only generator lives in tests/: the child processes must import it too.
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "g", "--run.name", "ddp"]
    run_cli_process(
        ["predict", "--config", str(config), *run, "--trainer.strategy", "ddp", "--trainer.devices", "2"],
        env={"PYTHONPATH": path},
    )
    single = tmp_path / "single"
    _predict(tmp_path, _config(tmp_path, single), "single")
    assert _files(out) == _files(single)
