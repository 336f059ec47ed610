"""Captioner: one text caption per image (TCKR's BLIP-2 captioning), or a class-name template.

Predict-only: ``synthpriv predict`` with ``CaptionWriter`` writes ``captions.jsonl`` and TCKR's two prompt files.
transformers is imported only when a model folder is loaded, so the CLI's start-up never pays for it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import LightningModule

PREDICT_ONLY = "Captioner is predict-only; run `synthpriv predict` with the CaptionWriter callback"
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Captioner(LightningModule):
    """Caption images with a local Hugging Face image-to-text model (BLIP-2, BLIP, GIT, ...) or a template.

    Images must arrive as [0, 1] RGB tensors (data module with ``normalize: false``); they are handed to the
    model's own processor as uint8 images, which resizes and normalises them. Decoding is deterministic
    (greedy with ``num_beams: 1``, beam search otherwise; never sampling). ``predict_step`` returns the
    captions with the batch's labels and dataset indices. Captions are the generated text only (a text
    prompt is not repeated in them), on one line (whitespace runs collapse to one space).
    """

    def __init__(
        self,
        model_path: str | None = None,
        template: str | None = None,
        prompt: str | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 1,
        dtype: Literal["float32", "float16", "bfloat16"] = "float32",
        num_classes: int = 2,
        class_names: list[str] | None = None,
        image_size: int = 32,
    ) -> None:
        """Check the arguments; the model itself loads in ``configure_model``.

        Args:
            model_path: local Hugging Face folder of an image-to-text model and its processor (config.json,
                weights, processor and tokenizer files), e.g. a saved ``Salesforce/blip2-opt-2.7b``; read with
                ``local_files_only=True``, nothing is downloaded. Exactly one of model_path and template.
            template: caption every image with this text, ``{class_name}`` replaced by the image's class name
                (used verbatim, e.g. "a photo of a {class_name}"); for users without a captioning model.
            prompt: optional text prompt the model continues (e.g. "a photo of"); TCKR uses none.
            max_new_tokens: most tokens generated per caption (TCKR: 20).
            num_beams: 1 for greedy decoding (TCKR), more for beam search.
            dtype: weights' dtype; float16/bfloat16 on a GPU (TCKR runs BLIP-2 in fp16), float32 on a CPU.
            num_classes: number of classes (linked from the data module).
            class_names: class names in label order (linked from the data module; the template needs them).
            image_size: side of the images the data module delivers (linked from the data module; recorded).
        """
        super().__init__()
        self.save_hyperparameters()
        if (model_path is None) == (template is None):
            raise ValueError(
                "Captioner needs exactly one of model.model_path (a local image-to-text model folder) and "
                "model.template (e.g. 'a photo of a {class_name}')"
            )
        if template is not None:
            if prompt is not None:
                raise ValueError("model.prompt is for a captioning model; a template run takes no prompt")
            try:
                template.format(class_name="x")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"model.template {template!r} must use only the field {{class_name}} ({err!r})"
                ) from err
        else:
            check_model_folder(model_path)
        if max_new_tokens < 1:
            raise ValueError(f"model.max_new_tokens must be at least 1; got {max_new_tokens}")
        if num_beams < 1:
            raise ValueError(f"model.num_beams must be at least 1; got {num_beams}")
        self.net: Any = None
        self.processor: Any = None
        self.skip_generation = False  # set by CaptionWriter when identical captions already exist

    def identity(self) -> dict[str, Any]:
        """What makes two captionings the same (CaptionWriter compares it with an earlier run's manifest)."""
        hp = self.hparams
        return {
            "model_path": str(Path(hp.model_path).expanduser().resolve()) if hp.model_path else None,
            "model_fingerprint": model_fingerprint(hp.model_path) if hp.model_path else None,
            "template": hp.template,
            "prompt": hp.prompt,
            "max_new_tokens": hp.max_new_tokens if hp.model_path else None,
            "num_beams": hp.num_beams if hp.model_path else None,
            "dtype": hp.dtype if hp.model_path else None,
        }

    def configure_model(self) -> None:
        """Load the processor and model from the local folder (once; skipped for templates and skipped runs)."""
        if self.net is not None or self.hparams.model_path is None or self.skip_generation:
            return
        self.processor, net = load_captioning_model(self.hparams.model_path, DTYPES[self.hparams.dtype])
        self.net = net.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> tuple[list[str], list[int]]:
        """[0, 1] images (B, 3, H, W) -> (captions, number of generated tokens per caption)."""
        if not images.is_floating_point():
            raise ValueError(f"Captioner expects float images in [0, 1]; got dtype {images.dtype}")
        low, high = float(images.min()), float(images.max())
        if low < -0.01 or high > 1.01:
            raise ValueError(
                f"Captioner got inputs in [{low:.3g}, {high:.3g}], i.e. already normalised; the model's processor "
                "normalises, so set data.normalize: false"
            )
        pixels = (images.detach().float().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
        prompt = self.hparams.prompt
        kwargs: dict[str, Any] = {"images": list(pixels), "return_tensors": "pt"}
        if prompt is not None:
            kwargs.update(text=[prompt] * len(pixels), padding=True)
        inputs = self.processor(**kwargs)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(DTYPES[self.hparams.dtype])
        generated = self.net.generate(
            **inputs,
            max_new_tokens=self.hparams.max_new_tokens,
            num_beams=self.hparams.num_beams,
            do_sample=False,
            return_dict_in_generate=True,
            output_scores=True,
        )
        # One score per decoding step: the new tokens are the last len(scores) columns, whatever the model put
        # before them (prompt ids and image tokens for decoder-only OPT, a start token for encoder-decoder T5).
        steps = len(generated.scores)
        output = generated.sequences[:, generated.sequences.shape[1] - steps :]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=output.device)
        counts = (~torch.isin(output, special)).sum(dim=1).tolist()
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [one_line(t) for t in texts], [int(c) for c in counts]

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Captions (list[str]) and generated token counts with the batch's labels and dataset indices."""
        labels = batch["label"]
        size = len(labels)
        if self.skip_generation:
            captions, counts = [""] * size, [0] * size
        elif self.hparams.template is not None:
            names = self.hparams.class_names
            if not names:
                raise ValueError("Captioner's template needs class names (linked from the data module)")
            captions = [self.hparams.template.format(class_name=names[int(y)]) for y in labels]
            counts = [0] * size
        else:
            with torch.inference_mode():
                captions, counts = self(batch["image"])
        return {
            "caption": captions,
            "tokens": torch.tensor(counts, dtype=torch.int64),
            "label": labels,
            "index": batch["index"],
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Refuse: nothing to train."""
        raise ValueError(PREDICT_ONLY)

    def setup(self, stage: str) -> None:
        """Refuse every stage but predict early, before any data is loaded."""
        if str(getattr(stage, "value", stage)) != "predict":
            raise ValueError(PREDICT_ONLY)

    def train(self, mode: bool = True) -> Captioner:
        """Stay in eval mode: dropout must never switch on."""
        return super().train(False)

    def configure_optimizers(self) -> None:
        """Refuse: nothing to train."""
        raise ValueError(PREDICT_ONLY)


def one_line(text: str) -> str:
    """A caption on one line: every whitespace run (newlines included) becomes one space."""
    return " ".join(text.split())


def check_model_folder(model_path: str) -> Path:
    """The folder, or an error naming it and the missing file."""
    folder = Path(model_path).expanduser()
    what = "a Hugging Face image-to-text model saved with save_pretrained (model and processor)"
    if not folder.is_dir():
        raise FileNotFoundError(f"model.model_path: folder {folder} does not exist; expected {what}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.model_path: {folder} has no config.json; expected {what}")
    if not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"model.model_path: {folder} has no weights (model.safetensors or pytorch_model.bin); expected {what}"
        )
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise FileNotFoundError(
            f"model.model_path: {folder} has no processor_config.json or preprocessor_config.json; save the "
            "processor into the folder too (processor.save_pretrained)"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"model.model_path: {folder} has no tokenizer files (tokenizer.json or tokenizer_config.json); save "
            "the processor into the folder too (processor.save_pretrained)"
        )
    return folder


def model_fingerprint(model_path: str) -> str:
    """sha256 over the folder's JSON configs and the names and sizes of its weight files (cheap for 10 GB)."""
    folder = Path(model_path).expanduser()
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.json")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    for pattern in WEIGHT_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            digest.update(f"{path.name}\0{path.stat().st_size}".encode())
    return digest.hexdigest()


def load_captioning_model(model_path: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(processor, model) from a local folder, offline."""
    import transformers  # heavy: imported only when a model is really loaded

    folder = check_model_folder(model_path)
    try:
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise OSError(f"model.model_path: cannot load the processor from {folder}: {err}") from err
    config = json.loads((folder / "config.json").read_text())
    classes = [getattr(transformers, name, None) for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq")]
    errors = []
    for auto in [c for c in classes if c is not None]:
        try:
            model = auto.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as err:
            errors.append(f"{auto.__name__}: {err}")
            continue
        return processor, model
    raise OSError(
        f"model.model_path: {folder} (model_type {config.get('model_type')!r}) is not an image-to-text model "
        f"transformers can load: {'; '.join(errors)}"
    )
