"""SemSim victims: ATS augmentation policies, the GradientDefence callback, a tiny fit with both, and the
14-configuration victim grid in configs/semsim/victims (parsed in-process with --print_config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import printed_config, tiny_config, tiny_dataset
from PIL import Image, ImageOps
from torch import nn

from callbacks import GradientDefence
from cli import main
from datamodules.ats_policies import ATS_SUBPOLICIES, OPERATIONS, ATSPolicy, magnitude, parse_spec
from datamodules.images import ImageFolderDataModule
from datamodules.transforms import build_transform

ROOT = Path(__file__).resolve().parents[1]
VICTIMS = ROOT / "configs" / "semsim" / "victims"


def _image(seed: int = 0, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int64)


# --- ATS policies -------------------------------------------------------------------------------------------------


def test_spec_parsing() -> None:
    assert parse_spec("3-1-7") == [[3, 1, 7]]
    assert parse_spec("3-1-7+43-18-18") == [[3, 1, 7], [43, 18, 18]]
    assert parse_spec(" 0 ") == [[0]]
    assert parse_spec("") == [] and ATSPolicy("").chains == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [("50", "out of range"), ("3--1", "found ''"), ("a-1", "found 'a'"), ("3-1+", "found ''"), ("-1", "found ''")],
)
def test_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ATSPolicy(spec)


def test_table_and_magnitudes() -> None:
    assert len(ATS_SUBPOLICIES) == 50 and {s.operation for s in ATS_SUBPOLICIES} <= set(OPERATIONS)
    assert ATS_SUBPOLICIES[3] == (0.3, "translateX", 9) and ATS_SUBPOLICIES[43] == (0.7, "translateY", 3)
    assert [magnitude("posterize", i) for i in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert magnitude("solarize", 0) == 256 and magnitude("solarize", 9) == 0
    assert magnitude("translateX", 9) == pytest.approx(150 / 331) and magnitude("rotate", 2) == pytest.approx(20 / 3)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        magnitude("rotate", 10)


def test_invert_twice_is_identity_and_solarize_256_keeps() -> None:
    img = _image()
    policy = ATSPolicy("0-47")  # invert (magnitude ignored), invert
    assert np.array_equal(_px(policy(img)), _px(img))
    assert np.array_equal(_px(ATSPolicy("0")(img)), 255 - _px(img))
    assert np.array_equal(_px(ATSPolicy("28")(img)), _px(img))  # solarize threshold 256: nothing inverted


def test_translate_moves_pixels_with_black_fill() -> None:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, 16] = 255
    img = Image.fromarray(arr)
    shifts = set()
    for seed in range(8):
        out = _px(ATSPolicy("3", seed=seed)(img))  # translateX, 150/331 of 32 px = 14.5 px, random sign
        cols = np.flatnonzero(out[:, :, 0].max(axis=0))
        assert len(cols) == 1 and abs(int(cols[0]) - 16) in (14, 15)
        shifts.add(int(np.sign(cols[0] - 16)))
        assert out.sum() == 255 * 32 * 3  # the line moved whole, the rest stayed black
    assert shifts == {-1, 1}
    moved = _px(ATSPolicy("43", seed=0)(Image.fromarray(arr.transpose(1, 0, 2).copy())))  # translateY
    rows = np.flatnonzero(moved[:, :, 0].max(axis=1))
    assert len(rows) == 1 and abs(int(rows[0]) - 16) in (4, 5)  # idx 3: 150/331/3 of 32 px = 4.8 px


def test_posterize_solarize_rotate() -> None:
    img = _image(1)
    posterized = _px(ATSPolicy("11")(img))  # 6 bits: multiples of 4
    assert (posterized % 4 == 0).all() and len(np.unique(posterized)) <= 64
    flat = Image.fromarray(np.array([[[200, 100, 142]]], np.uint8))
    assert _px(ATSPolicy("37")(flat)).tolist() == [[[55, 100, 142]]]  # threshold 256 - 4/9*256 = 142.2
    rotated = _px(ATSPolicy("2")(Image.new("RGB", (32, 32), (255, 255, 255))))
    assert rotated[0, 0].tolist() == [128, 128, 128] and rotated[16, 16].tolist() == [255, 255, 255]


def test_chains_apply_in_order() -> None:
    img = _image(2)
    solarize_then_invert = ImageOps.invert(ImageOps.solarize(img, magnitude("solarize", 4)))
    invert_then_solarize = ImageOps.solarize(ImageOps.invert(img), magnitude("solarize", 4))
    assert np.array_equal(_px(ATSPolicy("37-29")(img)), _px(solarize_then_invert))
    assert np.array_equal(_px(ATSPolicy("29-37")(img)), _px(invert_then_solarize))
    assert not np.array_equal(_px(solarize_then_invert), _px(invert_then_solarize))


def test_plus_chooses_one_chain_per_image_seeded() -> None:
    img = _image(3)
    inverted = 255 - _px(img)

    def picks(seed: int) -> list[bool]:
        policy = ATSPolicy("0+28", seed=seed)  # invert, or solarize at 256 (identity)
        outs = [_px(policy(img)) for _ in range(200)]
        assert all(np.array_equal(o, inverted) or np.array_equal(o, _px(img)) for o in outs)
        return [np.array_equal(o, inverted) for o in outs]

    first = picks(0)
    assert first == picks(0) and first != picks(1)
    assert 70 < sum(first) < 130


def test_probability_option_and_tensor_input() -> None:
    img = _image(4)
    assert np.array_equal(_px(ATSPolicy("29")(img)), 255 - _px(img))  # table probability 0.0, applied anyway
    assert np.array_equal(_px(ATSPolicy("29", use_probability=True)(img)), _px(img))
    tensor = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    out = ATSPolicy("0-11")(tensor)
    assert out.dtype == torch.uint8 and torch.equal(
        out.permute(1, 2, 0), torch.from_numpy(_px(ATSPolicy("0-11")(img))).to(torch.uint8)
    )


def test_ats_preset_empty_is_identity_and_errors(tmp_path: Path) -> None:
    img = _image(5, size=28)
    none = build_transform("none", 32, True, (0.5,) * 3, (0.5,) * 3, train=True)
    empty = build_transform("ats", 32, True, (0.5,) * 3, (0.5,) * 3, train=True, ats_policy="")
    assert torch.equal(none(img), empty(img))
    inverting = build_transform("ats", 32, True, None, None, train=True, ats_policy="0")
    plain = build_transform("none", 32, True, None, None, train=True)(img)
    assert torch.allclose(inverting(img), 1 - plain, atol=1.5 / 255)  # inverted after the resize (uint8 rounding)
    evaluation = build_transform("ats", 32, True, None, None, train=False, ats_policy="0")
    assert torch.equal(evaluation(img), build_transform("none", 32, True, None, None, train=False)(img))
    with pytest.raises(ValueError, match="transform: ats"):
        build_transform("cifar", 32, True, None, None, train=True, ats_policy="3-1-7")
    data = tiny_dataset(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"data\.ats_policy: .*out of range"):
        ImageFolderDataModule(train_roots=str(data / "train"), transform="ats", ats_policy="3-99")


def test_robust_preset_noise_stays_in_range_and_varies() -> None:
    from datamodules.transforms import RandomChannelNoise

    img = _image(5, size=28)
    robust = build_transform("robust", 32, True, None, None, train=True)
    torch.manual_seed(0)
    out = torch.stack([robust(img) for _ in range(16)])
    assert out.shape == (16, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1])
    channels = out.flatten(2).mean(-1)  # per-channel gains: the grey input comes out coloured
    assert (channels.max(1).values - channels.min(1).values).max() > 0.02
    plain = build_transform("none", 32, True, None, None, train=False)(img)
    assert torch.equal(build_transform("robust", 32, True, None, None, train=False)(img), plain)  # evaluation: plain
    zero = RandomChannelNoise(max_gain=0.0, max_sigma=0.0)
    assert torch.equal(zero(plain), plain)
    with pytest.raises(ValueError, match="max_gain < 1"):
        RandomChannelNoise(max_gain=1.0, max_sigma=0.1)


def test_ats_preset_in_membership_pool(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", {"a": 2, "b": 2})
    dm = ImageFolderDataModule(
        train_roots=str(data / "train"),
        val_fraction=0.0,
        image_size=32,
        normalize=False,
        transform="ats",
        ats_policy="0",
    )
    pool = dm.membership_pool("train")  # not a batched preset: the per-image transform runs on uint8 tensors
    x = pool.training_inputs(torch.arange(2), torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and torch.allclose(x, 1 - pool.normalise(pool.inputs[:2]), atol=1e-6)


# --- GradientDefence ----------------------------------------------------------------------------------------------


def _module_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10))
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    module[1].bias.requires_grad_(False)  # a frozen parameter is left alone
    return module


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def test_defence_none_changes_nothing() -> None:
    module = _module_with_grads()
    before = _grads(module)
    GradientDefence("none").on_before_optimizer_step(None, module, None)
    assert all(torch.equal(a, b) for a, b in zip(before, _grads(module), strict=True))


def test_defence_gaussian_std_and_determinism() -> None:
    module = _module_with_grads()
    before = _grads(module)
    GradientDefence("gaussian", scale=1e-2, seed=3).on_before_optimizer_step(None, module, None)
    after = _grads(module)
    noise = torch.cat([(a - b).flatten() for a, b in zip(after[:3], before[:3], strict=True)])
    assert noise.numel() == 62_200 and abs(noise.std().item() / 1e-2 - 1) < 0.02 and abs(noise.mean().item()) < 2e-4
    assert torch.equal(after[3], before[3])  # frozen bias
    again = _module_with_grads()
    GradientDefence("gaussian", scale=1e-2, seed=3).on_before_optimizer_step(None, again, None)
    assert all(torch.equal(a, b) for a, b in zip(after, _grads(again), strict=True))


def test_defence_laplace_std_and_resume_state() -> None:
    module = _module_with_grads()
    before = _grads(module)
    defence = GradientDefence("laplace", scale=1e-2, seed=1)
    state = defence.state_dict()
    defence.on_before_optimizer_step(None, module, None)
    noise = (_grads(module)[0] - before[0]).flatten()
    assert abs(noise.std().item() / (2**0.5 * 1e-2) - 1) < 0.05
    resumed = GradientDefence("laplace", scale=1e-2, seed=1)
    resumed.on_before_optimizer_step(None, _module_with_grads(), None)  # advance, then rewind to the saved state
    resumed.load_state_dict(state)
    replay = _module_with_grads()
    resumed.on_before_optimizer_step(None, replay, None)
    assert torch.equal(_grads(replay)[0], _grads(module)[0])
    with pytest.raises(ValueError, match="same defence"):
        GradientDefence("laplace", scale=1e-1, seed=1).load_state_dict(state)


def test_defence_prune_share() -> None:
    module = _module_with_grads()
    before = _grads(module)
    GradientDefence("prune", percent=70).on_before_optimizer_step(None, module, None)
    for a, b in zip(_grads(module)[:3], before[:3], strict=True):
        zeroed = a == 0
        assert zeroed.sum().item() == int(a.numel() * 0.7)
        assert a[zeroed.logical_not()].abs().min() >= b[zeroed].abs().max()  # the smallest ones went
        assert torch.equal(a[~zeroed], b[~zeroed])


def test_defence_bad_options() -> None:
    with pytest.raises(ValueError, match="kind"):
        GradientDefence("dropout")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        GradientDefence("gaussian", scale=0.0)
    with pytest.raises(ValueError, match="percent"):
        GradientDefence("prune", percent=120)


# --- CLI: a tiny fit, and the victim grid -------------------------------------------------------------------------


def test_tiny_fit_with_ats_and_defence(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data", {"a": 4, "b": 4}, size=16)
    config_path = tiny_config(tmp_path / "fit.yaml", data, backbone="convnet-64", optimizer="sgd", lr=0.01)
    config = yaml.safe_load(config_path.read_text())
    config["data"]["init_args"].update(transform="ats", ats_policy="3-1-7+43-18-18", batch_size=4)
    config["trainer"]["callbacks"].append(
        {"class_path": "GradientDefence", "init_args": {"kind": "gaussian", "scale": 1e-3, "seed": 0}}
    )
    config_path.write_text(yaml.safe_dump(config))
    runs = tmp_path / "runs"
    main(["fit", "--config", str(config_path), "--run.root", str(runs), "--run.study", "s", "--run.name", "victim"])
    run = runs / "s" / "victim"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["ats_policy"] == "3-1-7+43-18-18"
    checkpoint = torch.load(next((run / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if "GradientDefence" in k)
    assert state["kind"] == "gaussian" and state["steps"] == 2  # 8 images, batch 4, 1 epoch


GRID = sorted(p.name for p in VICTIMS.glob("*.yaml") if p.name != "base.yaml")
EXPECTED = {
    "aug": ("ats", "", None),
    "crop": ("cifar", "", None),
    "aug_3-1-7": ("ats", "3-1-7", None),
    "aug_43-18-18": ("ats", "43-18-18", None),
    "aug_3-1-7+43-18-18": ("ats", "3-1-7+43-18-18", None),
    "crop_prune_70": ("cifar", "", {"kind": "prune", "percent": 70.0}),
    "crop_gaussian_1e-3": ("cifar", "", {"kind": "gaussian", "scale": 0.001}),
}


def test_grid_is_complete() -> None:
    assert GRID == sorted(f"{arch}_{t}.yaml" for arch in ("resnet20-4", "convnet-64") for t in EXPECTED)


@pytest.mark.parametrize("name", GRID)
def test_victim_config_parses(name: str) -> None:
    configs = ["configs/trainer/cpu.yaml", "configs/callbacks/default.yaml", "configs/semsim/victims/base.yaml"]
    configs += ["configs/recipes/semsim_victim.yaml", f"configs/semsim/victims/{name}"]
    printed = printed_config(["fit", *[arg for c in configs for arg in ("--config", c)]])
    arch, training = name.removesuffix(".yaml").split("_", 1)
    transform, policy, defence = EXPECTED[training]
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]
    assert model["backbone"] == arch and model["optimizer"] == "sgd" and model["lr"] == 0.1
    assert (data["transform"], data["ats_policy"], data["image_size"], data["batch_size"]) == (
        transform,
        policy,
        32,
        64,
    )
    assert data["train_roots"] == "data/animal-mnist/train"
    callbacks = printed["trainer"]["callbacks"]
    defences = [c["init_args"] for c in callbacks if c["class_path"].endswith("GradientDefence")]
    assert len(callbacks) == 3 + len(defences)  # default.yaml's callbacks are kept (appended with callbacks+)
    if defence is None:
        assert not defences
    else:
        assert len(defences) == 1 and defence.items() <= defences[0].items()
