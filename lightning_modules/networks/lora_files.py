"""LoRA adapters as files: diffusers' ``pytorch_lora_weights.safetensors`` written and read back.

The file holds the UNet (and optionally text-encoder) LoRA weights in diffusers' key layout plus peft's adapter
metadata, so ``StableDiffusionPipeline.load_lora_weights`` reloads it with the right scale even when alpha !=
rank (shapes alone do not show alpha). Reading checks rank / alpha against the model and refuses weights for a
part without LoRA, missing layers and other shapes, naming the file. diffusers, peft and safetensors are imported
inside the functions (CLI start-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

LORA_FILE = "pytorch_lora_weights.safetensors"


def adapter_file(path: str | Path) -> Path:
    """The safetensors file of an exported LoRA (given its folder or the file itself)."""
    path = Path(path).expanduser()
    file = path / LORA_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"adapter_path: expected a LoRA exported by save_adapter (a folder holding {LORA_FILE}, or that file); "
            f"found nothing at {file}"
        )
    return file


def save_lora_adapter(
    directory: str | Path,
    unet: nn.Module,
    unet_config: Any,
    text_encoder: nn.Module | None = None,
    text_encoder_config: Any = None,
) -> Path:
    """Write the peft LoRA of ``unet`` (and of ``text_encoder`` when given) in diffusers' format to ``directory``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    kwargs: dict[str, Any] = {
        "unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        "unet_lora_adapter_metadata": unet_config.to_dict(),
    }
    if text_encoder is not None:
        kwargs["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
        kwargs["text_encoder_lora_adapter_metadata"] = text_encoder_config.to_dict()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(out, safe_serialization=True, **kwargs)
    return out


def _check_scale(file: Path, rank: int, alpha: float) -> None:
    """Refuse an adapter whose recorded rank / alpha differ from the model's."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as handle:
        meta = json.loads((handle.metadata() or {}).get("lora_adapter_metadata") or "{}")
    for key, value in {"r": rank, "lora_alpha": alpha}.items():
        found = meta.get(f"unet.{key}")
        if found is not None and float(found) != float(value):
            raise ValueError(
                f"adapter_path {file}: trained with unet {key} {found}, this model has {value}; "
                "set lora_rank / lora_alpha as in the training run"
            )


def load_lora_adapter(
    path: str | Path, unet: nn.Module, rank: int, alpha: float, text_encoder: nn.Module | None = None
) -> None:
    """Load an exported LoRA into the peft adapters of ``unet`` (and ``text_encoder``); every weight must fit.

    Raises:
        FileNotFoundError: no adapter at ``path``.
        ValueError: another rank / alpha, weights for a part without LoRA, missing layers or other shapes.
    """
    from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    file = adapter_file(path)
    state = load_file(file)
    _check_scale(file, rank, alpha)
    parts = [("unet", unet, convert_unet_state_dict_to_peft)]
    if text_encoder is not None:
        parts.append(("text_encoder", text_encoder, convert_state_dict_to_peft))
    known = {k for k in state if k.split(".", 1)[0] in {name for name, _, _ in parts}}
    if known != set(state):
        extra = sorted(set(state) - known)
        raise ValueError(
            f"adapter_path {file}: holds weights for {extra[0].split('.', 1)[0]} (e.g. {extra[0]}) but this model "
            "has no LoRA there; set text_encoder_lora as in the training run"
        )
    for name, module, convert in parts:
        prefix = f"{name}."
        weights = convert({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        expected = get_peft_model_state_dict(module)
        missing = sorted(set(expected) - set(weights))
        shapes = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
        if missing or shapes or len(weights) != len(expected):
            detail = f"lacks {missing[0]}" if missing else ""
            if shapes and not missing:
                found, wanted = tuple(weights[shapes[0]].shape), tuple(expected[shapes[0]].shape)
                detail = f"{shapes[0]} has another shape: {found} in the file, {wanted} in this model"
            raise ValueError(
                f"adapter_path {file}: its {name} LoRA does not match this model ({detail or 'other layers'}); "
                "use the training run's lora_rank, lora_targets and base model"
            )
        set_peft_model_state_dict(module, weights)
