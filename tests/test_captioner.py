"""Captioner + CaptionWriter through cli.main: a tiny offline BLIP-2, templates, file formats, reruns, DDP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_helpers import quiet_cpu_trainer, run_cli_process, tiny_dataset

from cli import main
from datamodules import ImageFolderDataModule
from lightning_modules import Captioner

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"ant": 3, "bee": 2, "cow": 2}


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to code points from 256 on."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_tiny_blip2(folder: Path) -> Path:
    """A random-weight BLIP-2 (OPT text model) with a byte-level tokenizer without merges, saved offline."""
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GPT2Tokenizer,
        OPTConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    end = "<|endoftext|>"
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    vocab[end] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = GPT2Tokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        unk_token=end,
        bos_token=end,
        eos_token=end,
        pad_token=end,
    )
    images = BlipImageProcessor(size={"height": 32, "width": 32}, do_normalize=True, do_convert_rgb=True)
    processor = Blip2Processor(image_processor=images, tokenizer=tokenizer, num_query_tokens=8)
    eos = vocab[end]
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            image_size=32,
            patch_size=4,
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
            encoder_hidden_size=32,
        ).to_dict(),
        text_config=OPTConfig(
            vocab_size=len(processor.tokenizer),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=32,
            max_position_embeddings=64,
            word_embed_proj_dim=16,
            bos_token_id=eos,
            eos_token_id=eos,
            pad_token_id=eos,
        ).to_dict(),
        num_query_tokens=8,
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def blip2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_blip2(tmp_path_factory.mktemp("blip2") / "tiny-blip2")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("captions") / "data", CLASSES)


def _config(path: Path, data: Path, split: str = "train", **model: Any) -> Path:
    config = {
        "seed_everything": 3,
        "trainer": quiet_cpu_trainer([{"class_path": "CaptionWriter"}]),
        "model": {"class_path": "Captioner", "init_args": model},
        "data": {
            "class_path": "ImageFolderDataModule",
            "init_args": {
                "train_roots": str(data / "train"),
                "val_root": str(data / "val"),
                "test_root": str(data / "test"),
                "predict_split": split,
                "normalize": False,
                "image_size": 16,
                "batch_size": 3,
            },
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _predict(config: Path, root: Path, name: str, *extra: str) -> Path:
    main(
        [
            "predict",
            "--config",
            str(config),
            "--run.root",
            str(root / "runs"),
            "--run.study",
            "t",
            "--run.name",
            name,
            *extra,
        ]
    )
    return root / "runs" / "t" / name


def _check_files(folder: Path, data: Path, splits: tuple[str, ...] = ("train",)) -> list[dict[str, Any]]:
    """Every image of the splits exactly once, in order, and the three files agreeing; returns the records."""
    dm = ImageFolderDataModule(
        train_roots=str(data / "train"), val_root=str(data / "val"), test_root=str(data / "test")
    )
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().split("\n") if line]
    expected = [(split, s) for split in splits for s in dm.samples(split)]
    assert [r["id"] for r in records] == [s.example_id for _, s in expected]
    assert len({(r["split"], r["id"]) for r in records}) == len(records)
    for record, (split, sample) in zip(records, expected):
        assert set(record) == {"id", "split", "path", "label", "class", "caption", "tokens"}
        assert record["split"] == split and record["label"] == sample.label
        # The path is relative to the captions folder (how read_captions resolves it).
        assert not Path(record["path"]).is_absolute()
        assert (folder / record["path"]).resolve() == Path(sample.path).resolve()
        assert record["class"] == dm.class_names[sample.label]
        assert "\n" not in record["caption"]
    lines = (folder / "prompts_classname_caption.txt").read_text().split("\n")
    assert lines[-1] == "" and lines[:-1] == [f"{r['class']}: {r['caption']}" for r in records]
    grouped = json.loads((folder / "prompts_by_class.json").read_text())
    assert list(grouped) == dm.class_names
    for name in dm.class_names:
        assert grouped[name] == [r["caption"] for r in records if r["class"] == name]
    manifest = json.loads((folder / "captions_manifest.json").read_text())
    assert sum(e["count"] for e in manifest["splits"].values()) == len(records)
    assert set(manifest["files"]) == {"captions.jsonl", "prompts_classname_caption.txt", "prompts_by_class.json"}
    return records


def test_template_captions_every_image(data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", data, split="all", template="a photo of a {class_name}")
    folder = _predict(config, tmp_path, "template")
    records = _check_files(folder, data, ("train", "val", "test"))
    assert {r["caption"] for r in records if r["class"] == "ant"} == {"a photo of a ant"}
    assert all(r["tokens"] == 0 for r in records)
    lines = (folder / "prompts_classname_caption.txt").read_text().split("\n")
    assert lines[0] == "ant: a photo of a ant"


def test_relative_data_root_gives_paths_read_captions_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data root and run root given relative to the working folder: the records still point at the images."""
    from datamodules.captioned_images import CaptionedImageDataModule, read_captions

    tiny_dataset(tmp_path / "work" / "data", CLASSES)
    monkeypatch.chdir(tmp_path / "work")
    config = _config(Path("c.yaml"), Path("data"), split="all", template="a photo of a {class_name}")
    assert yaml.safe_load(config.read_text())["data"]["init_args"]["train_roots"] == "data/train"
    folder = _predict(config, Path("out"), "relative")
    assert not folder.is_absolute()
    captions = folder / "captions.jsonl"
    records = [json.loads(line) for line in captions.read_text().splitlines() if line]
    assert len(records) == 3 * sum(CLASSES.values())
    for record in records:
        assert not Path(record["path"]).is_absolute()
        # From out/runs/t/relative/ back to data/<split>/<class>/<file>.
        assert record["path"] == f"../../../../data/{record['split']}/{record['class']}/{Path(record['path']).name}"

    # Resolved from a different working folder, so only the captions file's folder can anchor the paths.
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "work" / captions
    for split in ("train", "val", "test"):
        resolved = read_captions(absolute, split)
        assert len(resolved) == sum(CLASSES.values())
        for record in resolved:
            image = Path(record["path"])
            assert image.is_file()
            assert image.resolve().parent.parent == (tmp_path / "work" / "data" / split).resolve()
    dm = CaptionedImageDataModule(str(absolute), prompt_type="template", resolution=16, batch_size=2)
    assert dm.class_names == list(CLASSES)
    assert dm.train_example_ids() == [r["id"] for r in records if r["split"] == "train"]
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["pixel_values"].shape == (2, 3, 16, 16)


def test_blip2_captions_are_greedy_bounded_and_rerun_safe(blip2: Path, data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", data, model_path=str(blip2), max_new_tokens=4)
    first = _predict(config, tmp_path, "a")
    records = _check_files(first, data)
    assert all(0 <= r["tokens"] <= 4 for r in records) and any(r["tokens"] > 0 for r in records)
    second = _predict(config, tmp_path, "b")
    assert (second / "captions.jsonl").read_text() == (first / "captions.jsonl").read_text()  # greedy: same

    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.suffix in (".jsonl", ".txt", ".json")}
    _predict(config, tmp_path, "a")  # identical rerun: skipped, files untouched
    after = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.suffix in (".jsonl", ".txt", ".json")}
    assert {k: after[k] for k in before} == before
    with pytest.raises(FileExistsError, match="max_new_tokens"):
        _predict(config, tmp_path, "a", "--model.init_args.max_new_tokens", "2")

    longer = _predict(config, tmp_path, "longer", "--model.init_args.max_new_tokens", "7")
    longer_records = _check_files(longer, data)
    assert all(r["tokens"] <= 7 for r in longer_records) and max(r["tokens"] for r in longer_records) > 4


def test_prompt_with_beam_search_is_not_repeated_in_the_caption(blip2: Path, data: Path, tmp_path: Path) -> None:
    config = _config(
        tmp_path / "c.yaml", data, model_path=str(blip2), max_new_tokens=3, prompt="a photo of", num_beams=2
    )
    records = _check_files(_predict(config, tmp_path, "prompt"), data)
    assert all(r["tokens"] <= 3 and not r["caption"].startswith("a photo of") for r in records)


def test_model_folder_errors_name_the_folder(data: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-blip2"
    refused = (FileNotFoundError, ValueError)  # jsonargparse wraps errors raised while building the model
    with pytest.raises(refused, match=r"folder .*no-such-blip2 does not exist"):
        _predict(_config(tmp_path / "c.yaml", data, model_path=str(missing)), tmp_path, "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(refused, match=r"empty has no weights \(model.safetensors"):
        _predict(_config(tmp_path / "c.yaml", data, model_path=str(empty)), tmp_path, "y")
    with pytest.raises(ValueError, match="exactly one of"):
        _predict(_config(tmp_path / "c.yaml", data), tmp_path, "z")
    with pytest.raises(FileNotFoundError, match=r"empty has no weights"):
        Captioner(model_path=str(empty))
    with pytest.raises(ValueError, match="class_name"):
        _predict(_config(tmp_path / "c.yaml", data, template="a photo of a {name}"), tmp_path, "w")


def test_ddp_captions_every_image_once(blip2: Path, data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path / "c.yaml", data, split="all", model_path=str(blip2), max_new_tokens=3)
    run = ["--run.root", str(tmp_path / "runs"), "--run.study", "t", "--run.name", "ddp"]
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.init_args.batch_size", "2"]
    run_cli_process(["predict", "--config", str(config), *run, *ddp])
    folder = tmp_path / "runs" / "t" / "ddp"
    records = _check_files(folder, data, ("train", "val", "test"))  # 7 per split: DistributedSampler pads
    assert not list(folder.glob(".*"))  # shards merged and removed
    single = _check_files(_predict(config, tmp_path, "single"), data, ("train", "val", "test"))
    assert [r["caption"] for r in records] == [r["caption"] for r in single]


def test_study_configs_parse(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("caption.yaml", "caption_template.yaml"):
        args = [
            "predict",
            "--config",
            str(ROOT / "configs/trainer/cpu.yaml"),
            "--config",
            str(ROOT / "configs/tckr" / name),
        ]
        with pytest.raises(SystemExit):
            main([*args, "--print_config"])
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["model"]["class_path"].endswith("Captioner")
        assert printed["data"]["init_args"]["normalize"] is False
        assert printed["data"]["init_args"]["predict_split"] == "train"
