"""Adapter export / import and trainable-only checkpoints of ``TextToImageDiffusion`` (a mixin, to keep the module's
training and sampling code apart from its file formats).

Checkpoints hold only the trainable weights (LoRA or the full UNet), the optimiser and the random-number states (so
a resumed fit draws the same noise, timesteps and batches as an uninterrupted one); frozen weights come from the base
model again on load. Exported adapters are diffusers' ``pytorch_lora_weights.safetensors``
(``lightning_modules.networks.lora_files``); a full fine-tune exports a diffusers folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class DiffusionFilesMixin:
    """File formats of TextToImageDiffusion: needs ``hparams``, ``unet``, ``text_encoder``, ``trainable_keys``."""

    # ------------------------------------------------------------------ export
    def save_adapter(self, directory: str | Path) -> Path:
        """Export the trained weights for diffusers.

        LoRA: ``pytorch_lora_weights.safetensors`` in diffusers' format with the adapter metadata (so alpha != rank
        reloads with the right scale), loadable by ``StableDiffusionPipeline.load_lora_weights``. Full fine-tune: a
        diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) that ``pretrained_model_path`` accepts.
        """
        out = Path(directory)
        if self.hparams.finetune == "full":
            from lightning_modules.networks.diffusion import save_components

            return save_components(
                {
                    "unet": self.unet,
                    "vae": self.vae,
                    "text_encoder": self.text_encoder,
                    "tokenizer": self.tokenizer,
                    "scheduler_config": self.scheduler_config,
                },
                out,
            )
        from lightning_modules.networks.lora_files import save_lora_adapter

        if self.hparams.text_encoder_lora:
            return save_lora_adapter(
                out, self.unet, self.unet_lora_config, self.text_encoder, self.text_encoder_lora_config
            )
        return save_lora_adapter(out, self.unet, self.unet_lora_config)

    @staticmethod
    def adapter_file(path: str | Path) -> Path:
        """The safetensors file of an exported LoRA (given its folder or the file itself)."""
        from lightning_modules.networks.lora_files import adapter_file

        return adapter_file(path)

    def load_adapter(self, path: str | Path) -> None:
        """Load a LoRA exported by ``save_adapter`` into this model's adapters (every LoRA weight must be there)."""
        if self.hparams.finetune != "lora":
            raise ValueError("adapter_path needs finetune: lora (a full fine-tune loads via pretrained_model_path)")
        from lightning_modules.networks.lora_files import load_lora_adapter

        hp = self.hparams
        text_encoder = self.text_encoder if hp.text_encoder_lora else None
        load_lora_adapter(path, self.unet, hp.lora_rank, hp.lora_alpha or hp.lora_rank, text_encoder)
        self._upcast_trainable()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights (LoRA or the full UNet); frozen ones come from the base again.

        With Lightning's ``EMAWeightAveraging`` callback, ``state_dict`` holds the averaged weights and
        ``current_model_state`` the raw ones (the callback's hook runs first); both are trimmed.
        """
        keep = self.trainable_keys
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in keep}
        # The random generators, so that a resumed fit draws the noise, timesteps, prompt dropout and the
        # DataLoader's shuffle exactly as an uninterrupted one (Lightning does not restore them). Plain tensors,
        # lists and numbers: the checkpoint still loads with weights_only=True.
        import random

        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, state, gauss_next = random.getstate()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(state), gauss_next],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that lacks trainable weights of this model; fill in the frozen ones from the base."""
        saved = set(checkpoint.get("state_dict", {}))
        missing = self.trainable_keys - saved
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trainable weights of this model (e.g. {sorted(missing)[0]}); "
                "it was trained with another finetune mode, LoRA rank/targets or base model"
            )
        unexpected = saved - set(self.state_dict())
        if unexpected:
            raise ValueError(
                f"checkpoint has {len(unexpected)} weights this model does not (e.g. {sorted(unexpected)[0]}); "
                "check finetune, lora_targets and text_encoder_lora against the training config"
            )
        frozen = {k: v for k, v in self.state_dict().items() if k not in saved}
        for key in ("state_dict", "current_model_state"):
            if key in checkpoint:
                checkpoint[key] = {**frozen, **checkpoint[key]}
        # A resumed fit continues the saved random streams (see on_save_checkpoint); every process gets the saved
        # ones (seed_everything gives all ranks the same seed). Validation, test, predict and
        # load_from_checkpoint leave the generators alone.
        rng = checkpoint.get("rng_states")
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            import random

            import numpy as np

            torch.set_rng_state(rng["torch"])
            if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
            kind, keys, pos, has_gauss, gauss = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            version, state, gauss_next = rng["python"]
            random.setstate((version, tuple(state), gauss_next))
