"""ShadowEnsemble: K shadow models of one architecture trained together, for LiRA and other attacks.

The K networks live as stacked parameters and buffers (leading axis K) and run through one template network
with ``torch.func.functional_call``; ``group_size`` models at a time go through ``vmap`` (many on a GPU,
few or one on a CPU, where batched convolutions are not faster). BatchNorm keeps separate running statistics
per model: the stacked buffers are updated in place through the vmap. Every step each model trains on its
own batch of its own members (``MembershipDataModule.train_batch``), so a model's loss never sees a
non-member; all K models advance together and are saved together in every checkpoint, which makes resuming
exact for each model. The optimiser is element-wise (AdamW or SGD over the stacked tensors), so it equals K
separate optimisers. ``predict`` returns every model's logits on every query view; ``ShadowLogitsWriter``
stores them as ``shadows.npz`` for ``synthpriv attack``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from lightning_modules.networks import build_backbone
from lightning_modules.recipes import optimizer_and_schedule


def _key(name: str) -> str:
    return name.replace(".", "__")  # module containers refuse dots in names


class ShadowEnsemble(LightningModule):
    """K shadow classifiers with the target's recipe, trained in groups of ``group_size``."""

    def __init__(
        self,
        backbone: str = "resnet8-1",
        group_size: int = 1,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        image_size: int = 32,
        feature_dim: int | None = None,
        bn_momentum: float | None = 0.1,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 5e-5,
        momentum: float = 0.9,
        nesterov: bool = True,
        scheduler: Literal["cosine", "multistep", "none"] = "cosine",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        """Configure the ensemble; copy the recipe values from the target's ImageClassifier config.

        Args:
            backbone: network name, as for ImageClassifier (e.g. resnet8-1, convnet-16, mobilenet_v3_small).
            group_size: models run together through vmap in one forward/backward (GPU: many; CPU: 1-4).
            num_classes: number of classes (linked from the data module).
            class_names: class names (linked from the data module).
            image_size: input side in pixels (linked from the data module).
            feature_dim: input size for feature-vector data and the ``linear`` backbone (linked from the data).
            bn_momentum: BatchNorm momentum of every BN layer.
            label_smoothing: label smoothing of the cross-entropy.
            mixup_alpha: per-model MixUp Beta(alpha, alpha); 0 disables it.
            optimizer: 'adamw' or 'sgd'.
            lr: learning rate.
            weight_decay: weight decay.
            momentum: SGD momentum.
            nesterov: SGD Nesterov momentum.
            scheduler: 'cosine' (per epoch, to 0), 'multistep' or 'none'.
            milestones: multistep epochs; default SemSim's.
            gamma: multistep decay factor.
        """
        super().__init__()
        self.save_hyperparameters()
        if group_size < 1:
            raise ValueError(f"model.group_size must be at least 1; got {group_size}")
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be at least 2; got {num_classes}")
        self.automatic_optimization = False
        self.weights = nn.ParameterDict()
        self.stats = nn.Module()  # BatchNorm running statistics, stacked
        self._names: list[str] = []
        self._buffer_names: list[str] = []
        self._num_models = 0  # K comes from the data module (data.num_models) or from a checkpoint

    def configure_models(self, num_models: int) -> None:
        """Build K freshly initialised networks and stack them (leading axis K)."""
        if num_models < 2:
            raise ValueError(f"data.num_models must be at least 2; got {num_models}")
        hp = self.hparams
        nets = [
            build_backbone(
                hp.backbone,
                hp.num_classes,
                image_size=hp.image_size,
                bn_momentum=hp.bn_momentum,
                feature_dim=hp.get("feature_dim"),
            )
            for _ in range(num_models)
        ]
        params, buffers = stack_module_state(nets)
        self._names, self._buffer_names = list(params), list(buffers)
        for name, value in params.items():
            self.weights[_key(name)] = nn.Parameter(value.detach().clone())
        for name, value in buffers.items():
            self.stats.register_buffer(_key(name), value.clone())
        template = copy.deepcopy(nets[0]).to("meta")
        object.__setattr__(self, "_template", template)  # shape-only network: not a submodule, not saved
        self._num_models = num_models

    @property
    def num_models(self) -> int:
        """K (0 before the models are built)."""
        return self._num_models

    def forward_group(self, models: slice, inputs: torch.Tensor, shared_input: bool = False) -> torch.Tensor:
        """Logits of models ``models`` on ``inputs``: (G, B, ...) per-model inputs, or (B, ...) shared."""
        params = {n: self.weights[_key(n)][models] for n in self._names}
        buffers = {n: getattr(self.stats, _key(n))[models] for n in self._buffer_names}
        self._template.train(self.training)

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self._template, (p, b), (x,))

        count = len(range(self.num_models)[models])
        if count == 1:
            first = {n: v[0] for n, v in params.items()}, {n: v[0] for n, v in buffers.items()}
            return one(*first, inputs if shared_input else inputs[0])[None]
        return vmap(one, in_dims=(0, 0, None if shared_input else 0), randomness="different")(params, buffers, inputs)

    def _groups(self) -> list[slice]:
        g = self.hparams.group_size
        return [slice(s, min(s + g, self.num_models)) for s in range(0, self.num_models, g)]

    def setup(self, stage: str) -> None:
        """Take K from the data module, check it and record the membership design next to the run."""
        datamodule = getattr(self.trainer, "datamodule", None)
        wanted = getattr(datamodule, "num_models", None)
        if wanted is not None:
            if self.num_models == 0:
                self.configure_models(wanted)
                if stage == "fit":  # elsewhere the checkpoint brings them (anonymised members cost k-Same runs)
                    self._standardise_each_model(datamodule)
            elif wanted != self.num_models:
                raise ValueError(
                    f"the checkpoint holds {self.num_models} shadow models but data.num_models is {wanted}"
                )
        if self.num_models == 0:
            raise ValueError("ShadowEnsemble needs a MembershipDataModule as data (data.num_models sets K)")
        if hasattr(datamodule, "num_classes") and datamodule.num_classes != self.hparams.num_classes:
            raise ValueError(f"model has {self.hparams.num_classes} classes but the data {datamodule.num_classes}")
        if stage == "fit" and hasattr(datamodule, "save_membership"):
            datamodule.setup(stage)
            if self.trainer.is_global_zero:
                datamodule.save_membership(self.trainer.default_root_dir)
            self.trainer.strategy.barrier()

    def _standardise_each_model(self, datamodule: Any) -> None:
        """``linear`` shadows z-score with their own members' statistics, as a probe does with its training set."""
        if self.hparams.backbone != "linear":
            return
        datamodule.setup("fit")
        mean, std = datamodule.member_statistics()
        self.stats.mean.copy_(mean)
        self.stats.std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def _mixed_loss(self, logits: torch.Tensor, labels: torch.Tensor, mix: tuple[Any, ...] | None) -> torch.Tensor:
        """Sum over models of each model's mean loss, so every model gets its own mean-loss gradient."""
        ls = self.hparams.label_smoothing

        def ce(target: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=ls, reduction="none")
            return loss.view(labels.shape).mean(1)

        if mix is None:
            return ce(labels).sum()
        lam, perm = mix
        return (lam * ce(labels) + (1 - lam) * ce(torch.gather(labels, 1, perm))).sum()

    def _mixup_draws(self, step: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp weights (K,) and partners (K, B) of one step, drawn for all K at once so groups do not matter."""
        k, b = shape
        rng = np.random.default_rng([self.current_epoch, step, 7])
        lam = torch.from_numpy(rng.beta(self.hparams.mixup_alpha, self.hparams.mixup_alpha, k))
        perm = torch.from_numpy(np.stack([rng.permutation(b) for _ in range(k)]))
        return lam, perm

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """One step of every model on its own member batch, ``group_size`` models per forward/backward."""
        step = int(batch)
        data = self.trainer.datamodule.train_batch(self.current_epoch, step, self.device)
        images, labels = data["image"], data["label"]
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        total, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        mixing = self._mixup_draws(step, labels.shape) if self.hparams.mixup_alpha > 0 else None
        for models in self._groups():
            x, y = images[models], labels[models]
            mix = None
            if mixing is not None:
                g, b = y.shape
                lam, perm = mixing[0][models].to(x.device), mixing[1][models].to(x.device)
                shape = (g, b) + (1,) * (x.ndim - 2)
                partner = torch.gather(x, 1, perm.view(shape).expand_as(x))
                lam_x = lam.float().view((g,) + (1,) * (x.ndim - 1))
                x = lam_x * x + (1 - lam_x) * partner
                mix = (lam.float(), perm)
            logits = self.forward_group(models, x)
            loss = self._mixed_loss(logits, y, mix)
            self.manual_backward(loss)
            total += loss.detach()
            correct += (logits.argmax(-1) == y).float().mean(1).sum().detach()
        optimizer.step()
        k, size = self.num_models, labels.numel()
        self.log("train/loss", total / k, prog_bar=True, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.log("train/acc", correct / k, prog_bar=True, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return total / k

    def on_train_epoch_end(self) -> None:
        """Step the per-epoch schedule (manual optimisation steps nothing by itself)."""
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Logits of every model on every view: ``logits`` (B, K, Q, C) with the batch's ``index``."""
        views = batch["image"]  # (B, Q, ...)
        b, q = views.shape[:2]
        flat = views.flatten(0, 1)
        parts = [self.forward_group(models, flat, shared_input=True) for models in self._groups()]
        logits = torch.cat(parts).view(self.num_models, b, q, -1).permute(1, 0, 2, 3)
        return {"logits": logits.float(), "index": batch["index"]}

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW or SGD over the stacked tensors (element-wise, so per model), cosine/multistep per epoch."""
        return optimizer_and_schedule(self.weights.values(), self.hparams, self.trainer.max_epochs)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the K models a checkpoint holds (outside a Trainer) or refuse one of another K/backbone/classes."""
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("backbone", "num_classes"):
            if key in saved and saved[key] != self.hparams[key]:
                raise ValueError(
                    f"checkpoint has {key}={saved[key]!r} but this ShadowEnsemble has {self.hparams[key]!r}"
                )
        stacked = [v for k, v in checkpoint["state_dict"].items() if k.startswith("weights.")]
        if not stacked:
            raise ValueError("checkpoint holds no ShadowEnsemble weights (no 'weights.*' entries)")
        count = int(stacked[0].shape[0])
        if self.num_models == 0:
            self.configure_models(count)
        elif count != self.num_models:
            raise ValueError(f"checkpoint holds {count} shadow models but data.num_models is {self.num_models}")
