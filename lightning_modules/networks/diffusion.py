"""Text-to-image diffusion components: loaded from a local diffusers folder or built from a YAML config.

A component set is a plain dict with ``unet`` (``UNet2DConditionModel``), ``vae`` (``AutoencoderKL`` or None for a
pixel-space model), ``text_encoder`` (``CLIPTextModel``), ``tokenizer`` and ``scheduler_config`` (the noise
scheduler's config dict; the training module builds a DDPM scheduler from it, the sampler DDIM or DPM-Solver, and
both keep its ``prediction_type``).

diffusers and transformers are imported inside the functions so that importing this module (and the CLI) stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

#: subfolder -> file that must exist in a diffusers folder (the VAE is optional: pixel-space models have none).
REQUIRED_FILES = {
    "unet": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}

SCHEDULER_KINDS = ("ddpm", "ddim", "dpm", "pndm")

DEFAULT_WORDS = (
    "a an the of photo picture image in on with and small large close up view"
    " red green blue black white grey brown dark light"
).split()


def _scheduler_class(kind: str) -> Any:
    import diffusers

    classes = {
        "ddpm": diffusers.DDPMScheduler,
        "ddim": diffusers.DDIMScheduler,
        "dpm": diffusers.DPMSolverMultistepScheduler,
        "pndm": diffusers.PNDMScheduler,
    }
    if kind not in classes:
        raise ValueError(f"scheduler kind {kind!r} is not one of {', '.join(SCHEDULER_KINDS)}")
    return classes[kind]


def training_scheduler(scheduler_config: dict[str, Any]) -> Any:
    """DDPM scheduler for training (add_noise / get_velocity), carrying the config's betas and prediction type."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dict(scheduler_config))


def sampling_scheduler(scheduler_config: dict[str, Any], kind: str) -> Any:
    """DDIM ('ddim') or DPM-Solver multistep ('dpm') scheduler for sampling, from the same config."""
    return _scheduler_class(kind).from_config(dict(scheduler_config))


def load_components(path: str | Path) -> dict[str, Any]:
    """Load UNet, optional VAE, text encoder, tokenizer and scheduler config from a local diffusers folder.

    Raises:
        ValueError: the folder or one of its required files is missing (the message names the file to put where).
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(
            f"pretrained_model_path: {root} is not a folder; expected a local diffusers folder with "
            + ", ".join(f"{sub}/{name}" for sub, name in REQUIRED_FILES.items())
            + " (and optionally vae/config.json)"
        )
    for sub, name in REQUIRED_FILES.items():
        if not (root / sub / name).is_file():
            raise ValueError(
                f"pretrained_model_path: {root} has no {sub}/{name}; a diffusers text-to-image folder needs "
                + ", ".join(f"{s}/{n}" for s, n in REQUIRED_FILES.items())
                + f" with the weights next to each config (put the {sub} files into {root / sub})"
            )
    for sub in ("unet", "text_encoder", *(["vae"] if (root / "vae" / "config.json").is_file() else [])):
        if not _has_weights(root / sub):
            raise ValueError(
                f"pretrained_model_path: {root / sub} has a config.json but no weights; expected "
                f"{' or '.join(WEIGHT_FILES[sub])} (or their sharded .index.json) next to it"
            )
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
    vae = None
    if (root / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    scheduler_config = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": _plain_scheduler_config(scheduler_config),
    }


WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def _has_weights(folder: Path) -> bool:
    """A diffusers / transformers component folder holds its weights (single file, fp16 variant or shards)."""
    stems = tuple(n.rsplit(".", 1)[0] for n in WEIGHT_FILES[folder.name])
    return any(f.name.startswith(stems) and f.suffix in (".safetensors", ".bin", ".json") for f in folder.iterdir())


def _plain_scheduler_config(config: dict[str, Any]) -> dict[str, Any]:
    """Scheduler config without diffusers' private keys, through a DDPM scheduler so defaults are filled in."""
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"scheduler prediction_type {prediction!r} is not supported (epsilon or v_prediction)")
    return cfg


def build_word_tokenizer(words: list[str] | None = None, max_length: int = 16) -> Any:
    """Word-level tokenizer (lower-cased, whitespace/punctuation split) for tiny config-built models.

    Ids: 0 pad, 1 bos, 2 eos, 3 unk, then ``DEFAULT_WORDS`` and the given words. Every prompt becomes
    ``bos words eos pad...`` of ``max_length``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(specials)}
    for word in [*DEFAULT_WORDS, *(words or [])]:
        vocab.setdefault(str(word).lower(), len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_components(config: dict[str, Any]) -> dict[str, Any]:
    """Build randomly initialised components from a config (YAML-given) dict.

    Keys:
        unet: ``UNet2DConditionModel`` keyword arguments.
        vae: ``AutoencoderKL`` keyword arguments, or null/absent for a pixel-space model (UNet in/out channels 3, or
            1 for grayscale images: trained on the RGB mean, generated images repeat it over RGB).
        text_encoder: ``CLIPTextConfig`` keyword arguments; vocab_size and bos/eos/pad ids default to the tokenizer's.
        tokenizer: a local tokenizer folder (str), or ``{words: [...], max_length: 16}`` for a word-level tokenizer.
        scheduler: ``{kind: ddpm|ddim|dpm|pndm, prediction_type: epsilon|v_prediction, ...}`` scheduler kwargs.
        seed: initialisation seed (default 0), so the same config builds the same weights.
    """
    unknown = set(config) - {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "seed"}
    if unknown:
        raise ValueError(
            f"components: unknown keys {sorted(unknown)}; expected unet, vae, text_encoder, tokenizer, scheduler, seed"
        )
    for key in ("unet", "text_encoder"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"components.{key}: expected a mapping of constructor arguments, got {config.get(key)!r}")
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tok_cfg = config.get("tokenizer") or {}
    if isinstance(tok_cfg, str):
        if not Path(tok_cfg).is_dir():
            raise ValueError(f"components.tokenizer: {tok_cfg} is not a local tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(tok_cfg, local_files_only=True)
    else:
        tokenizer = build_word_tokenizer(tok_cfg.get("words"), int(tok_cfg.get("max_length", 16)))

    te_kwargs = dict(config["text_encoder"])
    te_kwargs.setdefault("vocab_size", len(tokenizer))
    te_kwargs.setdefault("max_position_embeddings", tokenizer.model_max_length)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            te_kwargs.setdefault(f"{name}_token_id", token_id)

    sched_kwargs = dict(config.get("scheduler") or {})
    kind = sched_kwargs.pop("kind", "ddpm")
    scheduler = _scheduler_class(kind)(**sched_kwargs)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.get("seed", 0)))
        unet = UNet2DConditionModel(**_tuples(config["unet"]))
        vae = AutoencoderKL(**_tuples(config["vae"])) if config.get("vae") else None
        text_encoder = CLIPTextModel(CLIPTextConfig(**te_kwargs))
    if vae is None and (unet.config.in_channels not in (1, 3) or unet.config.out_channels != unet.config.in_channels):
        raise ValueError(
            f"components: no vae (pixel space) but unet in/out channels {unet.config.in_channels}/"
            f"{unet.config.out_channels}; a pixel-space UNet takes and returns 3 channels (RGB) or 1 (grayscale)"
        )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": _plain_scheduler_config(dict(scheduler.config)),
    }


def _tuples(kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML gives lists; diffusers wants tuples for block types and channels."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def save_components(components: dict[str, Any], path: str | Path) -> Path:
    """Write components as a diffusers folder (unet/, vae/ when present, text_encoder/, tokenizer/, scheduler/).

    A latent model (with a VAE) is written by ``StableDiffusionPipeline.save_pretrained`` (no safety checker), so
    the folder also has ``model_index.json`` and ``StableDiffusionPipeline.from_pretrained`` loads it; diffusers has
    no text-to-image pipeline for a pixel-space UNet, so such a folder holds the components only (which
    ``load_components`` / ``pretrained_model_path`` read).
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    scheduler = training_scheduler(components["scheduler_config"])
    if components.get("vae") is not None:
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline(
            vae=components["vae"],
            text_encoder=components["text_encoder"],
            tokenizer=components["tokenizer"],
            unet=components["unet"],
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(root)
        return root
    components["unet"].save_pretrained(root / "unet")
    components["text_encoder"].save_pretrained(root / "text_encoder")
    components["tokenizer"].save_pretrained(root / "tokenizer")
    scheduler.save_pretrained(root / "scheduler")
    return root


def masked_mse(pred: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample MSE (B,), over the pixels a ``loss_mask`` (B,1,H,W) in [0, 1] keeps (all without one).

    The mask is given at image size and area-resized to the prediction's size (latents), so a latent is weighted by
    the share of its pixels that count; a sample whose mask keeps nothing contributes 0. Used to train on segments
    whose cut-out region is not content (SpinML backgrounds with the object removed), as masked-loss DreamBooth does.
    """
    squared = F.mse_loss(pred, target, reduction="none")
    if loss_mask is None:
        return squared.mean(dim=(1, 2, 3))
    mask = loss_mask.to(squared.dtype)
    if mask.dim() != 4 or mask.shape[:2] != (pred.shape[0], 1):
        raise ValueError(f"batch loss_mask: expected (B={pred.shape[0]},1,H,W); found {tuple(mask.shape)}")
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("batch loss_mask: expected finite values in [0, 1]")
    if mask.shape[-2:] != pred.shape[-2:]:
        mask = F.interpolate(mask, size=pred.shape[-2:], mode="area")
    kept = (mask.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-8)
    return (squared * mask).sum(dim=(1, 2, 3)) / kept
