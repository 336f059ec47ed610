"""SemSimNet: a metric of reconstruction leakage learned from human judgements (SemSim, NeurIPS 2023).

An embedding f (CIFAR ResNet18 without its classifier, ``networks/semsim_resnet.py``) is trained with the triplet
loss ``max(0, |f(x) - f(x+)| - |f(x) - f(x-)| + margin)`` on **L2-normalised** embeddings (margin 1, p = 2), where
x is the original, x+ a reconstruction people recognised and x- one they did not (``seeds.md`` §2.5). SemSim of a
pair is the distance between the two embeddings: lower = more similar = more leakage.

Test-time distance (``seeds.md`` §2.6): ``distance: normalized`` (default) measures it between L2-normalised
embeddings, the geometry the loss trained; ``distance: raw`` uses the unnormalised 512-d features, which is what
the original code does at test time (a mismatch with its own training). The two differ in value and can differ
in ranking, so the choice is explicit and recorded in the checkpoint.

Validation / test metrics (batches of labelled pairs from ``HumanAnnotationDataModule``):
  ``pairwise_acc``: image-level agreement with people: for each original, the share of (recognisable,
      unrecognisable) reconstruction pairs in which the recognisable one is closer (ties count half), averaged
      over the originals that have both kinds; uses the configured distance.
  ``loss``: the triplet loss over every (original, recognisable, unrecognisable) triplet of each original, on the
      normalised embeddings (the training objective, measured on held-out originals).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.networks.semsim_resnet import CifarResNet18Embedding
from lightning_modules.recipes import optimizer_and_schedule
from privacy.agreement import pairwise_accuracy

Distance = Literal["normalized", "raw"]


def grouped_triplet_loss(
    distances: torch.Tensor, recognisable: torch.Tensor, groups: torch.Tensor, margin: float
) -> torch.Tensor:
    """Mean hinge ``max(0, d(x, x+) - d(x, x-) + margin)`` over every triplet of every original."""
    terms = []
    for g in torch.unique(groups):
        mine = groups == g
        pos, neg = distances[mine & recognisable], distances[mine & ~recognisable]
        if len(pos) and len(neg):
            terms.append(torch.clamp(pos[:, None] - neg[None, :] + margin, min=0).flatten())
    return torch.cat(terms).mean() if terms else torch.tensor(float("nan"))


class PairAgreement(Metric):
    """Epoch-level pairwise accuracy and triplet loss from per-pair distances (synced across DDP ranks)."""

    full_state_update = False

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin
        for name in ("distance", "normalized", "recognisable", "group"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, distance: torch.Tensor, normalized: torch.Tensor, recognisable: torch.Tensor, group: torch.Tensor
    ) -> None:
        self.distance.append(distance.detach().float())
        self.normalized.append(normalized.detach().float())
        self.recognisable.append(recognisable.bool())
        self.group.append(group.long())

    def compute(self) -> dict[str, torch.Tensor]:
        rec, grp = dim_zero_cat(self.recognisable).bool(), dim_zero_cat(self.group)
        return {
            "pairwise_acc": pairwise_accuracy(dim_zero_cat(self.distance), rec, grp).float(),
            "loss": grouped_triplet_loss(dim_zero_cat(self.normalized), rec, grp, self.margin),
        }


class SemSimNet(LightningModule):
    """Triplet-trained embedding whose distance scores how recognisable a reconstruction is."""

    def __init__(
        self,
        backbone: Literal["cifar_resnet18"] = "cifar_resnet18",
        width: int = 64,
        margin: float = 1.0,
        distance: Distance = "normalized",
        optimizer: Literal["adamw", "sgd"] = "sgd",
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        nesterov: bool = True,
        scheduler: Literal["cosine", "multistep", "none"] = "multistep",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
    ) -> None:
        """Configure SemSim.

        Args:
            backbone: embedding network: 'cifar_resnet18' (3x3 stem, no max-pool, 4 stages of 2 BasicBlocks,
                fc removed).
            width: stem channels; the embedding has 8 * width dimensions (SemSim: 64 -> 512-d).
            margin: triplet-loss margin (SemSim: 1).
            distance: test-time distance: 'normalized' (between L2-normalised embeddings, as trained) or 'raw'
                (unnormalised features: the original code's test-time choice, a mismatch with its training).
            optimizer: 'sgd' with Nesterov momentum (SemSim) or 'adamw'.
            lr: learning rate (SemSim: 0.05).
            weight_decay: weight decay (SemSim: 5e-4).
            momentum: SGD momentum.
            nesterov: SGD Nesterov momentum.
            scheduler: 'multistep' (SemSim), 'cosine' or 'none'.
            milestones: multistep epochs; default SemSim's (max_epochs / 2.667, / 1.6, / 1.142: 37/62/87 of 100).
            gamma: multistep decay factor.
        """
        super().__init__()
        self.save_hyperparameters()
        if margin <= 0:
            raise ValueError(f"model.margin must be positive; got {margin}")
        self.model = CifarResNet18Embedding(width=width)
        self.loss_fn = torch.nn.TripletMarginLoss(margin=margin, p=2)
        self.configure_metrics()

    def configure_metrics(self) -> None:
        """Per-stage pairwise agreement metrics."""
        self.val_metrics = PairAgreement(self.hparams.margin)
        self.test_metrics = PairAgreement(self.hparams.margin)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings (N, 8 * width)."""
        return self.model(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings (the training geometry)."""
        return F.normalize(self(images), dim=1)

    def distance(
        self, originals: torch.Tensor, reconstructions: torch.Tensor, distance: Distance | None = None
    ) -> torch.Tensor:
        """SemSim per pair: (N,) L2 distances between the embeddings of ``originals[i]`` and ``reconstructions[i]``.

        Inputs are normalised image batches as the data module gives them; call in eval mode for scores (BatchNorm).
        ``distance`` overrides the configured ``normalized`` / ``raw`` choice.
        """
        if originals.shape != reconstructions.shape:
            raise ValueError(
                f"SemSim pairs need equal shapes; got originals {tuple(originals.shape)} and reconstructions "
                f"{tuple(reconstructions.shape)} (resize both to the same size)"
            )
        return self._pair_distances(originals, reconstructions)[distance or self.hparams.distance]

    def _pair_distances(self, originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, torch.Tensor]:
        raw = self(torch.cat([originals, reconstructions]))
        a, b = raw.chunk(2)
        return {
            "raw": torch.linalg.vector_norm(a - b, dim=1),
            "normalized": torch.linalg.vector_norm(F.normalize(a, dim=1) - F.normalize(b, dim=1), dim=1),
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Triplet loss on L2-normalised embeddings of (anchor, positive, negative), one forward for all three."""
        n = batch["anchor"].shape[0]
        emb = self.embed(torch.cat([batch["anchor"], batch["positive"], batch["negative"]]))
        anchor, positive, negative = emb.split(n)
        loss = self.loss_fn(anchor, positive, negative)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], metrics: PairAgreement) -> dict[str, torch.Tensor]:
        d = self._pair_distances(batch["original"], batch["reconstruction"])
        metrics.update(d[self.hparams.distance], d["normalized"], batch["recognisable"], batch["group"])
        return d

    def _log_epoch(self, metrics: PairAgreement, stage: str) -> None:
        for key, value in metrics.compute().items():
            self.log(f"{stage}/{key}", value, prog_bar=stage == "val")
        metrics.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate validation pair distances (metrics are per original, so computed at epoch end)."""
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Accumulate test pair distances."""
        self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Score pairs: ``distance`` (the configured one), both variants, labels, group ids and dataset indices."""
        d = self._pair_distances(batch["original"], batch["reconstruction"])
        return {
            "distance": d[self.hparams.distance],
            "distance_normalized": d["normalized"],
            "distance_raw": d["raw"],
            "recognisable": batch["recognisable"],
            "group": batch["group"],
            "index": batch["index"],
        }

    def on_validation_epoch_end(self) -> None:
        """Log val/pairwise_acc and val/loss."""
        self._log_epoch(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        """Log test/pairwise_acc and test/loss."""
        self._log_epoch(self.test_metrics, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """SGD-Nesterov + multistep (SemSim) or AdamW / cosine, stepped per epoch."""
        return optimizer_and_schedule(self.parameters(), self.hparams, self.trainer.max_epochs)
