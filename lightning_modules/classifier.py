"""ImageClassifier: teachers, students and victims trained from YAML configs.

Cross-entropy with label smoothing and optional MixUp (real-data teachers), or generative knowledge
distillation from a frozen teacher checkpoint (TCKR's student, ``seeds.md`` §3.2 step 4). Two optimiser
recipes: AdamW + cosine (TCKR) and SGD-Nesterov + multistep (SemSim).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningModule
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.class_metrics import PresentClassAccuracy, PresentClassAUROC
from lightning_modules.networks import build_backbone, load_weights
from lightning_modules.pretrained import resolve_weights
from lightning_modules.recipes import optimizer_and_schedule


class ImageClassifier(LightningModule):
    """Image classifier over a registry backbone.

    Batches are dicts with ``image`` (N,3,H,W), ``label`` (N,) and ``index`` (N,) as produced by
    ``ImageFolderDataModule``.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 10,
        class_names: list[str] | None = None,
        image_size: int = 32,
        weights: str | None = None,
        bn_momentum: float | None = 0.1,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        teacher_checkpoint: str | None = None,
        distill_temperature: float = 1.0,
        distill_weight: float = 1.0,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 5e-5,
        momentum: float = 0.9,
        nesterov: bool = True,
        scheduler: Literal["cosine", "multistep", "none"] = "cosine",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        """Configure the classifier.

        Args:
            backbone: network name: mobilenet_v3_small, mobilenet_v3_large, mobilenet_v2, resnet18, resnet50,
                resnet{depth}-{width} (CIFAR ResNet, e.g. resnet20-4) or convnet-{width} (e.g. convnet-64).
            num_classes: number of classes (linked from the data module).
            class_names: class names in label order (linked from the data module; used in reports).
            image_size: input side in pixels (linked from the data module; sizes the ConvNet head).
            weights: pretrained weights: a local state-dict / checkpoint path, or 'imagenet' for torchvision's
                file from the local cache. The head is always replaced for num_classes.
            bn_momentum: BatchNorm momentum applied to every BN layer (None keeps the model's own).
            label_smoothing: label smoothing of the cross-entropy (TCKR: 0.1).
            mixup_alpha: Beta(alpha, alpha) MixUp on training batches; 0 disables it. Ignored when distilling.
            teacher_checkpoint: ImageClassifier checkpoint of a frozen teacher (or its run folder: the best
                checkpoint, else last.ckpt); when set, the loss is
                distillation on the teacher's soft labels for the same augmented batch.
            distill_temperature: softmax temperature for teacher and student logits.
            distill_weight: weight of the soft-label loss; 1 - distill_weight goes to the hard-label loss.
            optimizer: 'adamw' (TCKR) or 'sgd' with momentum / Nesterov (SemSim).
            lr: learning rate.
            weight_decay: weight decay.
            momentum: SGD momentum.
            nesterov: SGD Nesterov momentum.
            scheduler: 'cosine' over the epochs (per epoch, to 0), 'multistep' or 'none'.
            milestones: multistep epochs; default SemSim's (max_epochs / 2.667, / 1.6, / 1.142).
            gamma: multistep decay factor.
        """
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be at least 2; got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"model.distill_weight must be in [0, 1]; got {distill_weight}")
        self.model = build_backbone(backbone, num_classes, image_size=image_size, bn_momentum=bn_momentum)
        if weights is not None:
            load_weights(self.model, backbone, resolve_weights(weights, backbone))
        self._teacher: ImageClassifier | None = None  # plain attribute: kept out of state_dict and checkpoints
        self.configure_metrics()

    def configure_metrics(self) -> None:
        """Per-stage torchmetrics (synced across DDP ranks by torchmetrics itself).

        AUROC is macro one-vs-rest over the classes present in the evaluation set and per-class accuracy is
        NaN for a class with no examples (see ``class_metrics``: torchmetrics alone would score such a class 0).
        """
        c = self.hparams.num_classes
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(c, average="micro"),
                "acc_top5": MulticlassAccuracy(c, top_k=min(5, c), average="micro"),
                "auroc": PresentClassAUROC(c, class_names=self.hparams.class_names),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.train_acc = MulticlassAccuracy(c, average="micro")
        self.test_per_class = PresentClassAccuracy(c)

    def configure_teacher(self) -> None:
        """Load and freeze the distillation teacher (only when training)."""
        path = self.hparams.teacher_checkpoint
        if path is None or self._teacher is not None:
            return
        if Path(path).is_dir():
            # A run folder: its best checkpoint (recorded by ModelCheckpoint), else last.ckpt.
            from tools.target_logits import resolve_target_checkpoint

            path = resolve_target_checkpoint(str(path))
        teacher = ImageClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        if teacher.hparams.num_classes != self.hparams.num_classes:
            raise ValueError(
                f"model.teacher_checkpoint: {path} has {teacher.hparams.num_classes} classes but the student "
                f"has {self.hparams.num_classes}"
            )
        t_names, s_names = teacher.hparams.class_names, self.hparams.class_names
        if t_names is not None and s_names is not None and list(t_names) != list(s_names):
            raise ValueError(
                f"model.teacher_checkpoint: class order differs between teacher {list(t_names)} and student "
                f"data {list(s_names)}; soft labels would be assigned to the wrong classes"
            )
        teacher.eval().requires_grad_(False)
        # object.__setattr__ bypasses nn.Module registration: no teacher weights in the student's checkpoint.
        object.__setattr__(self, "_teacher", teacher.to(self.device))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.model(images)

    def _distillation_loss(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        with torch.no_grad():
            teacher_logits = self._teacher(images)
        t = hp.distill_temperature
        soft = F.softmax(teacher_logits / t, dim=1)
        # Cross-entropy against the teacher's soft labels (TCKR), scaled by t^2 to keep gradient size.
        loss = F.cross_entropy(logits / t, soft, label_smoothing=hp.label_smoothing) * t * t
        if hp.distill_weight < 1.0:
            hard = F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)
            loss = hp.distill_weight * loss + (1.0 - hp.distill_weight) * hard
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step: distillation, MixUp or plain cross-entropy."""
        images, labels = batch["image"], batch["label"]
        hp = self.hparams
        if self._teacher is not None:
            logits = self(images)
            loss = self._distillation_loss(logits, images, labels)
        elif hp.mixup_alpha > 0:
            lam = float(np.random.beta(hp.mixup_alpha, hp.mixup_alpha))
            perm = torch.randperm(images.shape[0], device=images.device)
            logits = self(lam * images + (1 - lam) * images[perm])
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing) + (
                1 - lam
            ) * F.cross_entropy(logits, labels[perm], label_smoothing=hp.label_smoothing)
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        if hp.mixup_alpha == 0 or self._teacher is not None:
            self.train_acc(logits.detach(), labels)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: MetricCollection, stage: str) -> torch.Tensor:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        metrics.update(logits, batch["label"])
        n = batch["label"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True, batch_size=n)
        self.log_dict(metrics, prog_bar=stage == "val", batch_size=n)
        return logits

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Validation loss, accuracy, top-5 accuracy and macro AUROC."""
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Test metrics plus per-class accuracy; returns logits for report callbacks."""
        logits = self._eval_step(batch, self.test_metrics, "test")
        self.test_per_class.update(logits, batch["label"])
        return {"logits": logits.detach()}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Return logits, probabilities and dataset indices (for the prediction writer)."""
        logits = self(batch["image"]).float()
        return {"logits": logits, "probs": logits.softmax(dim=1), "index": batch["index"]}

    def setup(self, stage: str) -> None:
        """Load the teacher only for training, so testing a student never needs its teacher file."""
        if stage == "fit":
            self.configure_teacher()

    def on_fit_start(self) -> None:
        """Move the (unregistered) teacher to this rank's device."""
        if self._teacher is not None:
            self._teacher.to(self.device)

    def on_test_epoch_end(self) -> None:
        """Log accuracy per class under the class names (NaN for a class with no test examples)."""
        per_class = self.test_per_class.compute()
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        for name, value in zip(names, per_class):
            self.log(f"test/acc_class/{name}", value)
        self.test_per_class.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store RNG states (as plain types, loadable with weights_only) so a resumed run continues exactly."""
        np_state = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse checkpoints of another shape with a clear message; restore RNG states."""
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("num_classes", "backbone"):
            if key in saved and saved[key] != self.hparams[key]:
                raise ValueError(
                    f"checkpoint has {key}={saved[key]!r} but this model has {key}={self.hparams[key]!r}; "
                    f"use a checkpoint trained for this {'data' if key == 'num_classes' else 'backbone'} "
                    "or change the config to match"
                )
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            kind, keys, *rest = states["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
            random.setstate(_as_tuple(states["python"]))

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW or SGD-Nesterov with a cosine or multistep schedule, stepped per epoch."""
        params = [p for p in self.parameters() if p.requires_grad]
        return optimizer_and_schedule(params, self.hparams, self.trainer.max_epochs)


def _as_tuple(value: Any) -> Any:
    """Checkpoints turn the python RNG state's tuples into lists; random.setstate needs tuples."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
