"""Per-class metrics that report a class with no evaluation examples as absent instead of scoring it 0.

What torchmetrics 1.9 does on its own: ``MulticlassAUROC`` builds each class's one-vs-rest ROC with
``_binary_roc_compute``; for a class with no positive example it warns "No positive samples in targets ...
Returning zero tensor in true positive score", sets that class's TPR curve to all zeros, so its AUROC is 0.0
(not NaN), and ``average="macro"`` then averages that 0 in: present classes with AUROC 1.0 and 0.75 plus one
absent class give (1.0 + 0.75 + 0) / 3 = 0.583 instead of 0.875. ``MulticlassAccuracy(average=None)`` divides
0 true positives by 0 examples with ``zero_division=0`` and shows 0.0 for the absent class.

The rules here:

* a class is **present** when it has at least one example (its support, summed over all DDP ranks, is > 0);
  a present class's accuracy is its recall; an absent class's is NaN;
* a class's one-vs-rest AUROC is **defined** when it has at least one positive and at least one negative
  example (some other class is present); otherwise it is NaN. With two or more present classes the defined
  classes are exactly the present ones;
* macro AUROC is the unweighted mean over the defined classes; NaN when none is defined (fewer than two
  classes present).

Both metrics decide from their synced torchmetrics states (concatenated targets, summed tp/fn counts) inside
``compute``, so every rank makes the same decision from the global counts, never from its own shard.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC
from torchmetrics.utilities.data import dim_zero_cat


def macro_over_present(per_class: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    """Mask undefined one-vs-rest scores and average the rest.

    Args:
        per_class: (C,) per-class one-vs-rest scores (e.g. AUROC).
        support: (C,) number of examples of each class in the evaluation set.

    Returns:
        ``(per_class, macro)``: (C,) scores with NaN where a class has no positive or no negative example,
        and the scalar mean over the remaining classes (NaN when none remains).
    """
    total = support.sum()
    defined = (support > 0) & (total - support > 0)
    masked = torch.where(defined, per_class.float(), torch.full_like(per_class, float("nan"), dtype=torch.float))
    macro = masked[defined].mean() if bool(defined.any()) else masked.new_tensor(float("nan"))
    return masked, macro


def warn_absent(support: Tensor, class_names: Sequence[str] | None) -> None:
    """One rank-zero warning naming the classes with no examples and what the macro average covers.

    Args:
        support: (C,) number of examples of each class in the evaluation set.
        class_names: C class names in label order; indices are used when None.
    """
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(support))]
    absent = [names[i] for i in range(len(support)) if int(support[i]) == 0]
    if not absent:
        return
    present = len(names) - len(absent)
    rank_zero_warn(
        f"class(es) {absent} have no examples in this evaluation set: their per-class accuracy and AUROC are "
        f"reported as absent (NaN; null in metrics.json, '–' in summary.md) and macro AUROC is the mean over the "
        f"{present} present class(es)" + ("" if present >= 2 else " (undefined: fewer than 2 classes present)"),
        category=UserWarning,
    )


class PresentClassAUROC(MulticlassAUROC):
    """Macro one-vs-rest AUROC over the classes present in the evaluation set (exact, unbinned).

    ``update(preds, target)`` takes preds (N, C) logits or probabilities and target (N,) class indices, as
    ``MulticlassAUROC``. ``compute()`` returns the scalar macro AUROC over the defined classes (see the module
    rules) and keeps the (C,) per-class AUROCs (NaN where undefined) and the (C,) support in ``per_class`` and
    ``support``; it warns once, naming the absent classes.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        """Args:
        num_classes: number of classes C.
        class_names: class names in label order, for the warning; default the indices.
        **kwargs: further ``Metric`` keyword arguments (e.g. ``sync_on_compute``).
        """
        super().__init__(num_classes, average=None, thresholds=None, **kwargs)
        self.class_names = list(class_names) if class_names is not None else None
        self.per_class: Tensor | None = None
        self.support: Tensor | None = None

    def compute(self) -> Tensor:
        """Macro AUROC over the present classes (states already synced across ranks by torchmetrics)."""
        target = dim_zero_cat(self.target)
        support = torch.bincount(target.long(), minlength=self.num_classes)
        with warnings.catch_warnings():
            # torchmetrics' own per-class warning; ours below names the classes instead.
            warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
            per_class = super().compute()
        self.per_class, macro = macro_over_present(per_class, support)
        self.support = support
        warn_absent(support, self.class_names)
        return macro


class PresentClassAccuracy(MulticlassAccuracy):
    """Accuracy of each class (its recall), NaN for a class with no examples.

    ``update(preds, target)`` as ``MulticlassAccuracy``; ``compute()`` returns (C,) accuracies. The support
    (tp + fn per class) comes from the summed, rank-synced stat-score states.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        """Args:
        num_classes: number of classes C.
        **kwargs: further ``Metric`` keyword arguments.
        """
        super().__init__(num_classes, average=None, **kwargs)

    def compute(self) -> Tensor:
        """(C,) per-class accuracy, NaN where the class has no examples."""
        tp, _, _, fn = self._final_state()
        support = tp + fn
        accuracy = super().compute().float()
        return torch.where(support > 0, accuracy, torch.full_like(accuracy, float("nan")))
