"""TextToImageDiffusion: LoRA or full fine-tuning of a text-to-image diffusion UNet, and sampling from it.

Training follows the diffusers text-to-image LoRA recipe (``generative_anchors.md`` §1.3): images become latents
(VAE sample x scaling factor; pixels in [-1, 1] when there is no VAE), noise and uniform timesteps are drawn,
the scheduler adds the noise, and the UNet regresses the target the scheduler config names (epsilon: the noise;
v_prediction: ``scheduler.get_velocity``). Optional min-SNR-gamma weighting (Hang et al. 2023, arXiv 2303.09556),
noise offset and prompt dropout (to "") for classifier-free guidance.

Precision comes from ``trainer.precision`` only: under ``16-mixed``/``bf16-mixed`` the frozen weights are cast to
half precision in ``setup`` and the trainable ones stay fp32 (``generative_anchors.md`` §0.5). Checkpoints hold only
the trainable weights (LoRA or full UNet) and load with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule

from lightning_modules.diffusion_files import DiffusionFilesMixin

BASE_MODEL_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class TextToImageDiffusion(DiffusionFilesMixin, LightningModule):
    """Text-to-image latent (or pixel) diffusion model with LoRA or full UNet training.

    Training batches are dicts with ``pixel_values`` (B,3,H,W) in [-1, 1] and ``prompt`` (list of str); cached
    ``latents`` (B,C,h,w, already scaled) and ``prompt_embeds`` (B,L,D) may replace them; an optional ``loss_mask``
    (B,1,H,W) in [0, 1] restricts the loss to the pixels it keeps (``networks.diffusion.masked_mse``). Predict
    batches are dicts with ``index``, ``prompt``, ``label`` and ``seed`` (one generator per image, so results do not
    depend on batching).
    """

    def __init__(
        self,
        pretrained_model_path: str | None = None,
        components: dict[str, Any] | None = None,
        finetune: Literal["lora", "full"] = "lora",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: list[str] | None = None,
        lora_init: Literal["gaussian", "default", "random"] = "gaussian",
        text_encoder_lora: bool = False,
        text_encoder_lora_targets: list[str] | None = None,
        lr: float = 1e-4,
        lr_warmup_steps: int = 0,
        weight_decay: float = 1e-2,
        snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        prompt_dropout: float = 0.0,
        sampler: Literal["ddim", "dpm"] = "dpm",
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        height: int | None = None,
        width: int | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        adapter_path: str | None = None,
    ) -> None:
        """Configure the model.

        Args:
            pretrained_model_path: local diffusers folder (unet/, vae/ optional, text_encoder/, tokenizer/,
                scheduler/). Exactly one of this and ``components``.
            components: config to build random components from (see
                ``lightning_modules.networks.diffusion.build_components``): tiny models for tests, or a small model
                to pretrain from scratch with ``finetune: full``.
            finetune: 'lora' (peft LoRA on the UNet attention projections, base frozen) or 'full' (whole UNet).
            lora_rank: LoRA rank r.
            lora_alpha: LoRA alpha (scale alpha / r); default r (scale 1, as in diffusers' script).
            lora_targets: UNet module names to adapt; default to_q, to_k, to_v, to_out.0.
            lora_init: 'gaussian' (diffusers' default: normal A, zero B), 'default' (peft: Kaiming A, zero B) or
                'random' (non-identity start, for tests only).
            text_encoder_lora: also train a LoRA on the text encoder (LoRA mode only).
            text_encoder_lora_targets: text encoder modules to adapt; default q_proj, k_proj, v_proj, out_proj.
            lr: AdamW learning rate (TCKR / diffusers LoRA: 1e-4).
            lr_warmup_steps: linear warm-up from 0 over this many optimiser steps, then constant (diffusers'
                ``constant_with_warmup``); 0 keeps the rate constant (TCKR).
            weight_decay: AdamW weight decay.
            snr_gamma: min-SNR-gamma loss weighting (recommended 5.0); None = plain MSE.
            noise_offset: scale of the per-(sample, channel) offset noise added to the noise; 0 disables it.
            prompt_dropout: share of training prompts replaced by "" (classifier-free guidance training).
            sampler: 'ddim' or 'dpm' (DPM-Solver multistep) for predict_step.
            num_inference_steps: sampling steps.
            guidance_scale: classifier-free guidance scale; 1 disables the unconditional pass.
            height: generated image height in pixels; default the UNet sample size x VAE factor.
            width: generated image width in pixels; default as height.
            num_classes: linked from the data module by the CLI; recorded only (prompts carry the classes).
            class_names: linked from the data module by the CLI; recorded only.
            adapter_path: a LoRA exported by ``save_adapter`` / ``AdapterExport`` (its folder or the
                ``pytorch_lora_weights.safetensors`` file) loaded onto the base, e.g. to generate from it. LoRA mode
                only; lora_rank, lora_alpha, lora_targets and text_encoder_lora must be the training run's.
        """
        super().__init__()
        if (pretrained_model_path is None) == (components is None):
            raise ValueError("TextToImageDiffusion: give exactly one of pretrained_model_path and components")
        if lr_warmup_steps < 0:
            raise ValueError(f"model.lr_warmup_steps: expected 0 or more, got {lr_warmup_steps}")
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must lie in [0, 1], got {prompt_dropout}")
        if lora_targets is None:
            lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
        if text_encoder_lora_targets is None:
            text_encoder_lora_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
        self.save_hyperparameters()
        # Under LightningCLI save_hyperparameters records the arguments as given (None), not the defaults above.
        self.hparams.lora_targets = list(lora_targets)
        self.hparams.text_encoder_lora_targets = list(text_encoder_lora_targets)
        self.strict_loading = False  # checkpoints hold only the trainable weights

        from lightning_modules.networks.diffusion import build_components, load_components, training_scheduler

        parts = load_components(pretrained_model_path) if pretrained_model_path else build_components(components)
        self.unet = parts["unet"]
        self.vae = parts["vae"]
        self.text_encoder = parts["text_encoder"]
        self.tokenizer = parts["tokenizer"]
        self.scheduler_config: dict[str, Any] = parts["scheduler_config"]
        self.noise_scheduler = training_scheduler(self.scheduler_config)
        self.prediction_type: str = self.noise_scheduler.config.prediction_type

        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        if finetune == "lora":
            self._add_lora()
        else:
            self.unet.requires_grad_(True)
        if adapter_path is not None:
            self.load_adapter(adapter_path)
        self._upcast_trainable()

    def _lora_config(self, targets: list[str]) -> Any:
        from peft import LoraConfig

        init: Any = {"gaussian": "gaussian", "default": True, "random": False}[self.hparams.lora_init]
        return LoraConfig(
            r=self.hparams.lora_rank,
            lora_alpha=self.hparams.lora_alpha or self.hparams.lora_rank,
            init_lora_weights=init,
            target_modules=list(targets),
        )

    def _add_lora(self) -> None:
        """Freeze the UNet and attach the adapter (and optionally one on the text encoder)."""
        self.unet.requires_grad_(False)
        self.unet_lora_config = self._lora_config(self.hparams.lora_targets)
        self.unet.add_adapter(self.unet_lora_config)
        if self.hparams.text_encoder_lora:
            self.text_encoder_lora_config = self._lora_config(self.hparams.text_encoder_lora_targets)
            self.text_encoder.add_adapter(self.text_encoder_lora_config)

    def _upcast_trainable(self) -> None:
        """Trainable parameters in fp32 whatever the frozen weights' dtype (diffusers' cast_training_params)."""
        for param in self.parameters():
            if param.requires_grad:
                param.data = param.data.float()

    @property
    def trainable_keys(self) -> set[str]:
        """State-dict keys of the trainable parameters (what checkpoints hold)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    @property
    def latent_scale(self) -> int:
        """Pixels per latent cell (1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def setup(self, stage: str) -> None:
        """Apply the trainer's precision: frozen weights to half under *-mixed, trainable ones kept fp32."""
        precision = str(getattr(self.trainer, "precision", "32")) if self._trainer is not None else "32"
        dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
        if dtype is None:
            return
        for module in (self.vae, self.text_encoder, self.unet if self.hparams.finetune == "lora" else None):
            if module is not None:
                for param in module.parameters():
                    if not param.requires_grad:
                        param.data = param.data.to(dtype)
        self._upcast_trainable()

    def on_train_epoch_start(self) -> None:
        """Frozen VAE and text encoder stay in eval mode (no dropout, no norm statistics updates)."""
        for module in (self.vae, self.text_encoder):
            if module is not None:
                module.eval()

    # ------------------------------------------------------------------ encoding
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> (scaled) latents; in pixel space the images themselves (their mean over RGB for a
        1-channel UNet, e.g. a grayscale dataset)."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values: expected (B,3,H,W), got {tuple(pixel_values.shape)}")
        if self.vae is None:
            if self.unet.config.in_channels == 1:  # grayscale pixel-space model: the luminance channel
                return pixel_values.float().mean(dim=1, keepdim=True)
            return pixel_values.float()
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            latents = self.vae.encode(pixel_values.to(vae_dtype)).latent_dist.sample()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).float()

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1], (B,3,H,W) (a 1-channel pixel-space model's output repeated over RGB)."""
        if self.vae is None:
            images = latents.clamp(-1, 1)
            return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode((latents / self.vae.config.scaling_factor + shift).to(vae_dtype)).sample
        return images.float().clamp(-1, 1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text-encoder hidden states (B, L, D); gradients only when the text encoder has a LoRA."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.hparams.text_encoder_lora):
            return self.text_encoder(ids)[0]

    # ------------------------------------------------------------------ training
    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """UNet prediction (epsilon or v, as the scheduler config says)."""
        return self.unet(noisy, timesteps, encoder_hidden_states=prompt_embeds.to(noisy.dtype)).sample

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Regression target: the noise (epsilon) or the velocity ``scheduler.get_velocity`` (v_prediction)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r}")

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) per timestep."""
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        return alphas / (1.0 - alphas)

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023, arXiv 2303.09556; as in diffusers' training scripts).

        epsilon: w = min(SNR, gamma) / SNR; v_prediction: w = min(SNR, gamma) / (SNR + 1).
        """
        snr = self.snr(timesteps)
        clipped = torch.clamp(snr, max=float(self.hparams.snr_gamma))
        return clipped / (snr + 1.0) if self.prediction_type == "v_prediction" else clipped / snr

    def shared_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """Diffusion loss on one batch (mean over samples of the per-sample MSE, optionally min-SNR weighted)."""
        latents = batch["latents"].float() if "latents" in batch else self.encode_images(batch["pixel_values"])
        bsz = latents.shape[0]
        if "prompt_embeds" in batch:
            embeds = batch["prompt_embeds"]
            if self.hparams.prompt_dropout > 0:
                drop = torch.rand(bsz) < self.hparams.prompt_dropout
                if drop.any():
                    empty = self.encode_prompts([""]).to(embeds.dtype)
                    embeds = torch.where(drop.to(embeds.device)[:, None, None], empty, embeds)
        else:
            prompts = list(batch["prompt"])
            if len(prompts) != bsz:
                raise ValueError(f"batch has {bsz} images but {len(prompts)} prompts")
            if self.hparams.prompt_dropout > 0:
                drop = (torch.rand(bsz) < self.hparams.prompt_dropout).tolist()
                prompts = ["" if d else p for d, p in zip(drop, prompts)]
            embeds = self.encode_prompts(prompts)

        noise = torch.randn_like(latents)
        if self.hparams.noise_offset:
            noise = noise + self.hparams.noise_offset * torch.randn(
                bsz, latents.shape[1], 1, 1, device=latents.device, dtype=latents.dtype
            )
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (bsz,), device=latents.device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = self.target(latents, noise, timesteps)
        pred = self(noisy, timesteps, embeds)
        from lightning_modules.networks.diffusion import masked_mse

        per_sample = masked_mse(pred.float(), target.float(), batch.get("loss_mask"))
        if self.hparams.snr_gamma is not None:
            per_sample = per_sample * self.loss_weights(timesteps)
        return per_sample.mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss, logged as train/loss."""
        loss = self.shared_step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.get("prompt", batch.get("latents"))))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Diffusion loss on held-out pairs, logged as val/loss."""
        loss = self.shared_step(batch)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch.get("prompt", batch.get("latents"))))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """Sample images in [-1, 1], (B,3,H,W); image i starts from noise drawn by a CPU generator seeded seeds[i]."""
        from lightning_modules.networks.diffusion import sampling_scheduler

        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        hp = self.hparams
        steps = num_inference_steps or hp.num_inference_steps
        guidance = hp.guidance_scale if guidance_scale is None else guidance_scale
        scale = self.latent_scale
        sample = self.unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        height = height or hp.height or sample * scale
        width = width or hp.width or height
        if height % scale or width % scale:
            raise ValueError(f"height/width {height}x{width} must be multiples of the VAE factor {scale}")
        channels = self.unet.config.in_channels
        shape = (channels, height // scale, width // scale)
        dtype = self.unet.conv_in.weight.dtype
        latents = torch.stack(
            [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        ).to(self.device)
        scheduler = sampling_scheduler(self.scheduler_config, hp.sampler)
        scheduler.set_timesteps(steps, device=self.device)
        latents = latents * scheduler.init_noise_sigma
        cond = self.encode_prompts(prompts)
        use_cfg = guidance != 1.0
        if use_cfg:
            uncond = self.encode_prompts([""] * len(prompts))
            cond = torch.cat([uncond, cond])
        for t in scheduler.timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = scheduler.scale_model_input(model_in, t)
            pred = self.unet(model_in.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample.float()
            if use_cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return self.decode_latents(latents)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Generate one image per (prompt, seed): returns index, images (uint8 B,3,H,W), prompt, label, seed."""
        seeds = [int(s) for s in torch.as_tensor(batch["seed"]).tolist()]
        images = self.generate(list(batch["prompt"]), seeds)
        images = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        return {
            "index": batch["index"],
            "images": images,
            "prompt": list(batch["prompt"]),
            "label": batch["label"],
            "seed": batch["seed"],
        }

    def generation_config(self) -> dict[str, Any]:
        """What decides the generated images, as JSON values (recorded by SyntheticImageWriter).

        ``adapter_sha256`` is the sha256 of the ``adapter_path`` file; None without one (weights from a predict
        ``--ckpt_path`` are loaded by the Trainer only after the writer has recorded this configuration).
        ``base_model_sha256`` hashes the base folder's unet/, vae/, text_encoder/, tokenizer/ and scheduler/ files
        (seconds for a Stable Diffusion folder), so a resumed run refuses a base that changed in place.
        """
        import hashlib
        import json

        from tools.files import file_sha256, folder_sha256

        hp = self.hparams
        sample = self.unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        height = hp.height or sample * self.latent_scale
        base = hp.pretrained_model_path
        components = hp.components
        return {
            "guidance_scale": float(hp.guidance_scale),
            "num_inference_steps": int(hp.num_inference_steps),
            "sampler": hp.sampler,
            "prediction_type": self.prediction_type,
            "height": int(height),
            "width": int(hp.width or height),
            "finetune": hp.finetune,
            "base_model": str(Path(base).expanduser().resolve()) if base else None,
            "base_model_sha256": folder_sha256(base, BASE_MODEL_PARTS) if base else None,
            "components_sha256": hashlib.sha256(json.dumps(components, sort_keys=True).encode()).hexdigest()
            if components is not None
            else None,
            "adapter": str(self.adapter_file(hp.adapter_path).resolve()) if hp.adapter_path else None,
            "adapter_sha256": file_sha256(self.adapter_file(hp.adapter_path)) if hp.adapter_path else None,
        }

    def configure_optimizers(self) -> Any:
        """AdamW over the trainable parameters only, with an optional linear warm-up (stepped per batch)."""
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warmup = int(self.hparams.get("lr_warmup_steps") or 0)
        if warmup == 0:
            return optimizer
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
