"""SegmentGeneration: SpinML's segment generation at privacy levels from ONE loaded text-to-image model.

SpinML (seeds.md §1.3) generates each image part (foreground object, background) at a privacy level:

* **L0** text only: plain sampling, exactly ``TextToImageDiffusion.generate`` (the TCKR generator);
* **L1** guided by Canny edges of the real segment: the same sampler with a ControlNet whose down/mid residuals
  are added to the UNet's skip connections (classifier-free guidance feeds the edge map to both halves);
* **L2** guided by the real segment itself (img2img): the segment is encoded (VAE mean, or the pixels themselves
  in pixel space), noised to the timestep where ``strength`` of the schedule remains, and denoised from there.

All three levels share the same UNet, VAE, text encoder, tokenizer and scheduler config objects: this is what
diffusers' ``from_pipe`` does for its pipeline classes, done inside one sampler so that it also works for the
project's pixel-space models (no VAE, 1 or 3 channels; diffusers has no pipeline for them). For a latent model
``pipelines()`` additionally hands out diffusers' txt2img / ControlNet / img2img pipelines built with
``from_pipe`` over the same objects. Image i of every level starts from the noise of its own seed, so a
request's foreground at L0 and L1 start from the same noise and differ only by the guidance.

**ControlNet.** ``controlnet_path`` loads real weights (a local diffusers ``ControlNetModel`` folder). Without
one, a ControlNet is initialised from the UNet (``ControlNetModel.from_unet``): its zero convolutions make it an
exact no-op, so L1 would silently equal L0. Generating L1 with such a ControlNet is refused unless it was trained
here (``finetune: controlnet``) or ``allow_untrained_controlnet`` is set (tests, benchmarks). The ControlNet's
conditioning embedding must downsample the control image exactly as the VAE downsamples the image (1x in pixel
space); this and the UNet-shape agreement are checked when the model is built, before anything is generated.

**Training the control branch** (``finetune: controlnet``): batches of real segments (``pixel_values`` in
[-1, 1]), their Canny maps (``guide`` in [0, 1]) and prompts; the UNet (with its LoRA, if ``adapter_path``), VAE
and text encoder stay frozen and only the ControlNet learns, with the parent's diffusion loss (epsilon or
v-prediction target, min-SNR weighting, prompt dropout). ``AdapterExport`` writes the ControlNet as a diffusers
folder that ``controlnet_path`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from lightning_modules.diffusion import TextToImageDiffusion
from lightning_modules.spinml_controlnet import check_controlnet, embedding_channels, load_controlnet

LEVELS = (0, 1, 2)


class SegmentGeneration(TextToImageDiffusion):
    """Segment generation at SpinML privacy levels L0/L1/L2 (predict), and ControlNet training (fit).

    Predict batches (``SegmentRequestDataModule``): ``index`` (B,), ``prompt``, ``part`` (lists), ``level`` (B,),
    ``seed`` (B,), ``segment`` (B,3,H,W) in [-1, 1] (the real segment), ``guide`` (B,3,H,W) in [0, 1] (its Canny
    map) and ``mask`` (B,1,H,W) uint8 (the real mask). ``predict_step`` returns index, images (uint8), level, part,
    prompt, seed and mask echoed, in batch order.
    """

    def __init__(
        self,
        *args: Any,
        finetune: Literal["lora", "full", "controlnet"] = "lora",
        controlnet_path: str | None = None,
        controlnet_embedding_channels: list[int] | None = None,
        controlnet_conditioning_scale: float = 1.0,
        allow_untrained_controlnet: bool = False,
        strength: float = 0.6,
        adapter_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Configure the generator (every TextToImageDiffusion argument applies too).

        Args:
            finetune: 'controlnet' trains only the ControlNet (UNet, its LoRA, VAE, text encoder frozen); 'lora'
                / 'full' as in TextToImageDiffusion (the parent's fine-tunes; generation uses neither).
            controlnet_path: local diffusers ControlNetModel folder (real Canny ControlNet weights). Default: a
                ControlNet initialised from the UNet (an exact no-op until trained).
            controlnet_embedding_channels: conditioning-embedding channels of a ControlNet made from the UNet;
                default sized from the VAE factor ([16] in pixel space, [16, 32] for a 2x VAE, SD's four for 8x).
            controlnet_conditioning_scale: multiplier of the ControlNet residuals at L1.
            allow_untrained_controlnet: generate L1 with an untrained from-UNet ControlNet (L1 then equals L0).
            strength: L2 img2img strength in (0, 1]: share of the schedule run from the noised real segment
                (0 would return the segment, 1 ignores it).
            adapter_path: a TCKR LoRA loaded onto the base (the generator of the CPU study); kept frozen.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"model.strength: expected a value in (0, 1]; found {strength}")
        control_mode = finetune == "controlnet"
        parent = ("lora" if adapter_path else "full") if control_mode else finetune
        super().__init__(*args, finetune=parent, adapter_path=None if control_mode else adapter_path, **kwargs)
        self.hparams.finetune = finetune
        if control_mode:
            if adapter_path is not None:
                from lightning_modules.networks.lora_files import load_lora_adapter

                hp = self.hparams
                te = self.text_encoder if hp.text_encoder_lora else None
                load_lora_adapter(adapter_path, self.unet, hp.lora_rank, hp.lora_alpha or hp.lora_rank, te)
            self.unet.requires_grad_(False)
            self.text_encoder.requires_grad_(False)
        if controlnet_path is not None:
            self.controlnet = load_controlnet(controlnet_path)
        else:
            from diffusers import ControlNetModel

            channels = controlnet_embedding_channels or embedding_channels(self.latent_scale)
            with torch.random.fork_rng(devices=[]):
                self.controlnet = ControlNetModel.from_unet(
                    self._base_unet(), conditioning_embedding_out_channels=tuple(channels)
                )
        check_controlnet(self.controlnet, self.unet, self.latent_scale, "model.controlnet")
        self.controlnet.requires_grad_(control_mode)
        if control_mode:
            self.controlnet.train()
        self._control: torch.Tensor | None = None

    def _base_unet(self) -> Any:
        """The UNet without peft wrappers (``from_unet`` copies plain module weights); LoRA deltas are left out, as
        diffusers' ControlNet training starts from the base UNet."""
        state = self.unet.state_dict()
        if not any("lora_" in k for k in state):
            return self.unet
        from diffusers import UNet2DConditionModel

        plain = UNet2DConditionModel.from_config(self.unet.config)
        plain.load_state_dict({k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k})
        return plain

    # ------------------------------------------------------------------ training (finetune: controlnet)
    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """UNet prediction, with the ControlNet residuals of the batch's guides while training the control branch."""
        if self._control is None:
            return super().forward(noisy, timesteps, prompt_embeds)
        embeds = prompt_embeds.to(noisy.dtype)
        down, mid = self.controlnet(
            noisy,
            timesteps,
            encoder_hidden_states=embeds,
            controlnet_cond=self._control.to(noisy.dtype),
            return_dict=False,
        )
        return self.unet(
            noisy,
            timesteps,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    def shared_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """The parent's diffusion loss; with ``finetune: controlnet`` the batch's ``guide`` drives the ControlNet."""
        if self.hparams.finetune != "controlnet":
            return super().shared_step(batch)
        if "guide" not in batch:
            raise ValueError("finetune: controlnet needs batches with 'guide' (B,3,H,W) Canny maps in [0, 1]")
        self._control = batch["guide"].float()
        try:
            return super().shared_step(batch)
        finally:
            self._control = None

    def on_train_epoch_start(self) -> None:
        """Frozen parts in eval mode; the UNet too when only the ControlNet trains."""
        super().on_train_epoch_start()
        if self.hparams.finetune == "controlnet":
            self.unet.eval()

    def save_adapter(self, directory: str | Path) -> Path:
        """Export the trained weights: the ControlNet as a diffusers folder (``finetune: controlnet``)."""
        if self.hparams.finetune != "controlnet":
            return super().save_adapter(directory)
        out = Path(directory)
        self.controlnet.save_pretrained(str(out), safe_serialization=True)
        return out

    # ------------------------------------------------------------------ sampling
    def image_size(self) -> tuple[int, int]:
        """(height, width) of generated images: hparams, else the UNet sample size x the VAE factor."""
        sample = self.unet.config.sample_size
        sample = sample if isinstance(sample, int) else sample[0]
        height = self.hparams.height or sample * self.latent_scale
        return int(height), int(self.hparams.width or height)

    def _encode_init(self, images: torch.Tensor) -> torch.Tensor:
        """Init images in [-1, 1] -> latents deterministically (the VAE posterior mean; pixels in pixel space)."""
        if self.vae is None:
            return self.encode_images(images)
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(images.to(vae_dtype)).latent_dist.mode()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * self.vae.config.scaling_factor).float()

    def check_level_ready(self, level: int) -> None:
        """Refuse L1 with an untrained from-UNet ControlNet (it would equal L0) unless explicitly allowed."""
        hp = self.hparams
        if (
            level == 1
            and hp.controlnet_path is None
            and hp.finetune != "controlnet"
            and not hp.allow_untrained_controlnet
        ):
            raise ValueError(
                "L1 needs a trained ControlNet: a ControlNet made from the UNet is an exact no-op (L1 would equal "
                "L0). Give model.controlnet_path (a local ControlNet folder, e.g. the adapter/ of a "
                "`finetune: controlnet` fit), or set model.allow_untrained_controlnet: true knowingly"
            )

    def on_predict_start(self) -> None:
        """Refuse a level that cannot run before the first request is generated."""
        items = getattr(getattr(self.trainer, "datamodule", None), "items", None) or []
        for level in sorted({int(i["level"]) for i in items if "level" in i}):
            self.check_level_ready(level)

    @torch.no_grad()
    def generate_level(
        self,
        prompts: list[str],
        seeds: list[int],
        level: int,
        segment: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] (B,3,H,W) at one level: L0 from text, L1 with ``guide`` (B,3,H,W in [0, 1]) through
        the ControlNet, L2 from ``segment`` (B,3,H,W in [-1, 1]) at ``strength``; image i from seeds[i] alone."""
        from lightning_modules.networks.diffusion import sampling_scheduler

        if level not in LEVELS:
            raise ValueError(f"level {level}: expected one of {LEVELS}")
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.check_level_ready(level)
        hp = self.hparams
        height, width = self.image_size()
        scale = self.latent_scale
        if height % scale or width % scale:
            raise ValueError(f"height/width {height}x{width} must be multiples of the VAE factor {scale}")
        need = {1: ("guide", guide), 2: ("segment", segment)}.get(level)
        if need is not None:
            name, tensor = need
            if tensor is None or tuple(tensor.shape) != (len(prompts), 3, height, width):
                found = None if tensor is None else tuple(tensor.shape)
                raise ValueError(
                    f"L{level}: expected {name} of shape {(len(prompts), 3, height, width)}; found {found}"
                )
        dtype = self.unet.conv_in.weight.dtype
        shape = (self.unet.config.in_channels, height // scale, width // scale)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])
        noise = noise.to(self.device)
        scheduler = sampling_scheduler(self.scheduler_config, hp.sampler)
        scheduler.set_timesteps(hp.num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        if level == 2:
            run = min(int(hp.num_inference_steps * hp.strength), hp.num_inference_steps)
            if run < 1:
                raise ValueError(f"strength {hp.strength} x {hp.num_inference_steps} steps runs no step; raise either")
            start = (hp.num_inference_steps - run) * scheduler.order
            timesteps = timesteps[start:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(start)
            init = self._encode_init(segment.to(self.device).float())
            latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(len(seeds)))
        else:
            latents = noise * scheduler.init_noise_sigma
        cond = self.encode_prompts(prompts)
        use_cfg = hp.guidance_scale != 1.0
        control = None
        if level == 1:
            control = guide.to(self.device, dtype)
            control = torch.cat([control, control]) if use_cfg else control
        if use_cfg:
            cond = torch.cat([self.encode_prompts([""] * len(prompts)), cond])
        cond = cond.to(dtype)
        for t in timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]) if use_cfg else latents, t)
            model_in = model_in.to(dtype)
            extra = {}
            if control is not None:
                down, mid = self.controlnet(
                    model_in,
                    t,
                    encoder_hidden_states=cond,
                    controlnet_cond=control,
                    conditioning_scale=float(hp.controlnet_conditioning_scale),
                    return_dict=False,
                )
                extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
            pred = self.unet(model_in, t, encoder_hidden_states=cond, **extra).sample.float()
            if use_cfg:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + hp.guidance_scale * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
        return self.decode_latents(latents)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Generate every request of the batch at its level (one sampler call per level present)."""
        levels = [int(v) for v in torch.as_tensor(batch["level"]).tolist()]
        seeds = [int(s) for s in torch.as_tensor(batch["seed"]).tolist()]
        prompts = list(batch["prompt"])
        height, width = self.image_size()
        out = torch.empty(len(levels), 3, height, width, dtype=torch.uint8)
        for level in sorted(set(levels)):
            rows = [i for i, v in enumerate(levels) if v == level]
            pick = torch.tensor(rows)
            images = self.generate_level(
                [prompts[i] for i in rows],
                [seeds[i] for i in rows],
                level,
                segment=batch["segment"][pick] if level == 2 else None,
                guide=batch["guide"][pick] if level == 1 else None,
            )
            out[pick] = ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
        return {
            "index": batch["index"],
            "images": out,
            "level": batch["level"],
            "part": list(batch["part"]),
            "prompt": prompts,
            "seed": batch["seed"],
            "mask": batch["mask"],
        }

    def generation_config(self) -> dict[str, Any]:
        """The parent's generation settings plus the level settings and the ControlNet's identity."""
        from tools.files import file_sha256

        hp = self.hparams
        config = super().generation_config()
        weights = None
        if hp.controlnet_path is not None:
            files = sorted(Path(hp.controlnet_path).expanduser().glob("diffusion_pytorch_model*.*"))
            weights = {f.name: file_sha256(f) for f in files}
        return {
            **config,
            "finetune": hp.finetune,
            "strength": float(hp.strength),
            "controlnet": str(Path(hp.controlnet_path).expanduser().resolve()) if hp.controlnet_path else "from_unet",
            "controlnet_sha256": weights,
            "controlnet_trained_here": hp.finetune == "controlnet",
            "controlnet_conditioning_scale": float(hp.controlnet_conditioning_scale),
            "controlnet_embedding_channels": list(self.controlnet.config.conditioning_embedding_out_channels),
        }

    def pipelines(self) -> dict[str, Any]:
        """diffusers pipelines for L0/L1/L2 sharing this model's loaded components (``from_pipe``); latent models
        only, since diffusers has no pipeline for a pixel-space UNet (``generate_level`` covers both)."""
        if self.vae is None:
            raise ValueError("pipelines(): this model is pixel-space (no VAE); diffusers' pipelines need a VAE")
        from diffusers import (
            StableDiffusionControlNetPipeline,
            StableDiffusionImg2ImgPipeline,
            StableDiffusionPipeline,
        )

        from lightning_modules.networks.diffusion import sampling_scheduler

        base = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=sampling_scheduler(self.scheduler_config, self.hparams.sampler),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
        )
        return {
            0: base,
            1: StableDiffusionControlNetPipeline.from_pipe(base, controlnet=self.controlnet),
            2: StableDiffusionImg2ImgPipeline.from_pipe(base),
        }
