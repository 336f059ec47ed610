"""Gradient inversion: reconstruct a victim's input images from the parameter gradients they produced.

Two attacks, as configured by the SemSim study (``seeds.md`` §2.2, ``privacy_anchors.md`` §4):

* **Inverting Gradients** (Geiping et al., "Inverting Gradients - How easy is it to break privacy in federated
  learning?", NeurIPS 2020, §4 eq. 4): minimise ``1 - cos(grad_theta L(x_hat, y), g*) + lambda_TV * TV(x_hat)``
  where the cosine is taken over ALL layers' gradients concatenated into one vector, TV is anisotropic
  (``mean|dx| + mean|dy|``), the optimiser is Adam on ``x_hat`` fed with the SIGN of the gradient (§4, "signed
  gradients"), lr 0.1 decayed x0.1 at 3/8, 5/8 and 7/8 of the iterations, ``x_hat`` is clamped to the
  normalised image box after every step, and of several restarts the one with the lowest final loss is kept.
* **DLG** (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, §3 eq. 4): squared L2 distance
  ``||grad_theta L(x_hat, y) - g*||^2`` minimised with L-BFGS.

Labels are either known or recovered with the iDLG rule (Zhao et al., "iDLG: Improved Deep Leakage from
Gradients", arXiv 2001.02610, 2020, §3.1): for one example under cross-entropy the last linear layer's weight
gradient is ``(softmax - onehot) (x) h`` with non-negative features ``h``, so only the true class's row sums
to a negative value.

**Batching.** Every target is treated as the batch-size-1 client of the paper: its gradient is computed alone
(``torch.func.vmap`` over ``grad`` of the per-example loss), and B targets are inverted in parallel, each
against its own observed gradient: the per-target cost is a function of that target's ``x_hat`` only, so the
gradient of the summed cost w.r.t. the stacked ``x_hat`` gives every target its own gradient, and Adam's
update is element-wise. A target's result therefore does not depend on the other targets in the batch (up to
floating-point kernel differences), and its random start is drawn from ``(seed, target id, restart)`` alone.
L-BFGS (DLG) is not separable across targets (its line search and curvature pairs are global), so DLG inverts
the targets one after another.

**BatchNorm.** The victim must be in eval mode (running statistics, as in SemSim's attack); per-example
gradients are then well defined. A model with BatchNorm or Dropout in training mode is refused.

Units: images are in the victim's *normalised* space (``(pixel - mean) / std`` with pixels in [0, 1]);
gradients are of ``loss_scale * cross_entropy`` (SemSim's repo uses 0.5) w.r.t. ``model.named_parameters()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

from privacy.checks import check_shape, class_labels, finite_floats
from privacy.inversion_steps import adam_steps, gradient_cost, lbfgs_steps, start_noise, total_variation

__all__ = [
    "PRESETS",
    "InversionConfig",
    "InversionResult",
    "gradient_cost",
    "invert",
    "observed_gradients",
    "recover_labels",
    "start_noise",
    "total_variation",
]


@dataclass(frozen=True)
class InversionConfig:
    """One gradient-inversion attack's hyperparameters (fields as in Inverting Gradients' config).

    Attributes:
        cost: ``"sim"`` 1 - cosine over all gradients concatenated (Geiping §4) or ``"l2"`` squared distance (DLG).
        optimizer: ``"adam"`` or ``"lbfgs"`` (DLG; one ``step`` = up to ``lbfgs_max_iter`` inner iterations).
        lr: learning rate of the optimiser on ``x_hat`` (normalised-image units per step for signed Adam).
        iterations: optimiser steps per restart.
        restarts: independent random starts per target; the lowest final loss wins.
        tv: weight of the anisotropic total variation ``mean|dx| + mean|dy|``.
        signed: feed Adam the sign of the gradient (Geiping §4).
        boxed: clamp ``x_hat`` to ``[(0 - mean)/std, (1 - mean)/std]`` per channel after every step.
        init: ``"randn"`` (standard normal in normalised space) or ``"zeros"``.
        lr_decay: multiply lr by 0.1 at 3/8, 5/8 and 7/8 of ``iterations``.
        lbfgs_max_iter: inner iterations per L-BFGS step (torch's default 20).
    """

    cost: Literal["sim", "l2"] = "sim"
    optimizer: Literal["adam", "lbfgs"] = "adam"
    lr: float = 0.1
    iterations: int = 8000
    restarts: int = 1
    tv: float = 1e-4
    signed: bool = True
    boxed: bool = True
    init: Literal["randn", "zeros"] = "randn"
    lr_decay: bool = True
    lbfgs_max_iter: int = 20

    def __post_init__(self) -> None:
        if self.cost not in ("sim", "l2") or self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"InversionConfig: cost must be sim|l2 and optimizer adam|lbfgs; got {self}")
        if self.init not in ("randn", "zeros"):
            raise ValueError(f"InversionConfig: init must be randn|zeros; got {self.init!r}")
        if self.iterations < 1 or self.restarts < 1 or self.lbfgs_max_iter < 1 or not self.lr > 0 or self.tv < 0:
            raise ValueError(f"InversionConfig: iterations, restarts >= 1, lr > 0 and tv >= 0 needed; got {self}")

    def with_iterations(self, iterations: int) -> InversionConfig:
        """A copy with another iteration budget (the lr milestones scale with it)."""
        return replace(self, iterations=iterations)


# SemSim's / ATSPrivacy's named configurations (seeds.md §2.2; `benchmark/step2_attack.py --optim NAME`).
# `zhu` keeps the original's lr 1e-4 with torch's L-BFGS defaults (tolerance_change 1e-9 on the step): on victims
# with small gradients its steps stop at once and the start is returned nearly unchanged, as in the original.
# `inversed_large` is left out: its values differ between the SemSim/ATSPrivacy scripts (4,800 it. TV 0.1 vs
# 12,000 it. TV 1e-2); build it with InversionConfig(iterations=..., tv=..., restarts=...).
PRESETS: dict[str, InversionConfig] = {
    "inversed": InversionConfig(),
    "inversed-zero": InversionConfig(init="zeros"),
    "zhu": InversionConfig(
        cost="l2",
        optimizer="lbfgs",
        lr=1e-4,
        iterations=50,
        restarts=2,
        tv=1e-3,
        signed=False,
        boxed=False,
        lr_decay=False,
    ),
}


class InversionResult(NamedTuple):
    """Output of :func:`invert`.

    Attributes:
        images: (B, C, H, W) reconstructions in normalised space, on the model's device.
        losses: (B,) final attack loss of the kept restart (cost + TV at the returned image).
        labels: (B,) int64 labels used (given or recovered with iDLG).
    """

    images: torch.Tensor
    losses: torch.Tensor
    labels: torch.Tensor


def _check_eval(model: nn.Module) -> None:
    stateful = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    for name, module in model.named_modules():
        if module.training and isinstance(module, stateful):
            raise ValueError(
                f"gradient inversion: the victim's {type(module).__name__} {name or '(root)'!r} is in training mode; "
                "call model.eval() first (per-example gradients need BatchNorm's running statistics and no dropout)"
            )


def _check_finite(tensor: torch.Tensor, what: str, axes: Sequence[str] | None = None) -> None:
    """Refuse NaN/inf; the check runs on the tensor's device and only a failing tensor is copied for the message."""
    if not torch.is_floating_point(tensor):
        raise ValueError(f"{what}: expected a floating-point tensor; found dtype {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        finite_floats(tensor.detach().cpu().numpy(), what, axes)


def _check_image_shape(model: nn.Module, shape: tuple[int, ...], device: torch.device, what: str) -> None:
    """One forward pass of a zero image, so an image size the victim cannot take fails here, by name."""
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device, dtype=next(model.parameters()).dtype))
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ValueError(f"{what}: the victim does not accept images of shape (C, H, W) = {shape}: {first}") from None


def _last_linear(model: nn.Module) -> tuple[int, nn.Linear]:
    """Index (in ``named_parameters`` order) of the last ``nn.Linear``'s weight, and the layer."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("gradient inversion: the victim has no nn.Linear layer (needed for the class count / iDLG)")
    layer = linears[-1]
    index = next(i for i, p in enumerate(model.parameters()) if p is layer.weight)
    return index, layer


def _labels(labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int, count: int, what: str) -> torch.Tensor:
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return torch.from_numpy(class_labels(arr, num_classes, what, count=count).copy())


def _per_example_loss(model: nn.Module, loss_scale: float) -> Callable:
    """``loss(params, buffers, x (C,H,W), y ()) -> loss_scale * CE`` of one example, as a batch of one."""

    def loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return loss_scale * F.cross_entropy(logits, y.unsqueeze(0))

    return loss


def _state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    return params, buffers


def observed_gradients(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int], loss_scale: float = 0.5
) -> list[torch.Tensor]:
    """The gradients an honest client would send for each target image ALONE (batch size 1).

    Args:
        model: the victim, in eval mode (BatchNorm running statistics).
        images: (B, C, H, W) targets in normalised space (after the victim's training transform).
        labels: (B,) int class labels in ``[0, num_classes)``.
        loss_scale: factor on the cross-entropy (SemSim's repo trains and attacks with 0.5 x CE).

    Returns:
        One tensor per ``model.named_parameters()`` entry, shape (B, *param.shape): ``d(loss_scale * CE)/d theta``
        of each target, computed with ``vmap(grad(...))`` in one call; detached.
    """
    _check_eval(model)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"observed_gradients images: expected a (B, C, H, W) tensor; found {getattr(images, 'shape', type(images))}"
        )
    _check_finite(images, "observed_gradients images", ("target", "channel", "row", "column"))
    _check_image_shape(model, tuple(images.shape[1:]), images.device, "observed_gradients images")
    _, head = _last_linear(model)
    y = _labels(labels, head.out_features, len(images), "observed_gradients labels").to(images.device)
    params, buffers = _state(model)
    grads = vmap(grad(_per_example_loss(model, loss_scale)), in_dims=(None, None, 0, 0))(params, buffers, images, y)
    return [grads[name].detach() for name in params]


def _check_gradients(
    model: nn.Module, target_grads: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
) -> list[torch.Tensor]:
    named = list(model.named_parameters())
    if isinstance(target_grads, Mapping):
        missing = [n for n, _ in named if n not in target_grads]
        extra = [n for n in target_grads if n not in dict(named)]
        if missing or extra:
            raise ValueError(
                f"target_grads: keys do not match the model's parameters; missing {missing[:3]}, extra {extra[:3]}"
            )
        target_grads = [target_grads[n] for n, _ in named]
    target_grads = list(target_grads)
    if len(target_grads) != len(named):
        raise ValueError(
            f"target_grads: expected one gradient per model parameter ({len(named)}, in named_parameters order); "
            f"found {len(target_grads)}"
        )
    if not target_grads or not isinstance(target_grads[0], torch.Tensor) or target_grads[0].ndim < 1:
        raise ValueError("target_grads: expected tensors of shape (B, *param.shape)")
    count = target_grads[0].shape[0]
    for (name, p), g in zip(named, target_grads):
        check_shape(g, (count, *p.shape), f"target_grads[{name!r}]")
        if g.device != p.device or g.dtype != p.dtype:
            raise ValueError(f"target_grads[{name!r}]: {g.dtype} on {g.device}; the model's is {p.dtype} on {p.device}")
        _check_finite(g, f"target_grads[{name!r}]")
    return target_grads


def recover_labels(target_grads: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """iDLG label recovery (Zhao et al. 2020, §3.1): per target, the row of the last linear layer's weight
    gradient whose sum is the smallest (the only negative one for CE with non-negative features).

    Args:
        target_grads: per-target gradients as returned by :func:`observed_gradients` (B, *param.shape) each.
        model: the victim (only its parameter layout is used).

    Returns:
        (B,) int64 labels on the gradients' device.
    """
    grads = _check_gradients(model, target_grads)
    index, _ = _last_linear(model)
    weight_grad = grads[index]  # (B, num_classes, features)
    return weight_grad.sum(dim=-1).argmin(dim=-1)


def invert(
    model: nn.Module,
    target_grads: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    labels: torch.Tensor | Sequence[int] | None,
    config: InversionConfig | str,
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    *,
    target_ids: Sequence[int] | None = None,
    loss_scale: float = 0.5,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> InversionResult:
    """Reconstruct B target images in parallel, each from its own observed gradient.

    Args:
        model: the victim in eval mode; its parameters are not changed.
        target_grads: per-target gradients (B, *param.shape), one per ``model.named_parameters()`` entry (list in
            that order, or a dict by name), e.g. from :func:`observed_gradients`.
        labels: (B,) known labels, or None to recover them with iDLG (:func:`recover_labels`).
        config: an :class:`InversionConfig` or a ``PRESETS`` name.
        image_shape: (C, H, W) of one target.
        mean, std: the victim's per-channel normalisation (pixels in [0, 1]); the box is ``[(0-mean)/std,
            (1-mean)/std]``.
        seed: attack seed; target ``target_ids[i]``'s start depends on (seed, id, restart) only.
        target_ids: integer id per target (default ``0..B-1``); pass the same id to reproduce one target alone.
        loss_scale: factor on the cross-entropy used to produce ``target_grads`` (SemSim: 0.5).
        on_step: called after every optimiser step with (step index over all restarts, (B,) losses before it).

    Returns:
        :class:`InversionResult` (images (B, C, H, W) in normalised space, final losses (B,), labels (B,)).
    """
    config = PRESETS[config] if isinstance(config, str) and config in PRESETS else config
    if not isinstance(config, InversionConfig):
        raise ValueError(f"invert config: expected an InversionConfig or one of {sorted(PRESETS)}; got {config!r}")
    _check_eval(model)
    grads = _check_gradients(model, target_grads)
    count = grads[0].shape[0]
    device, dtype = grads[0].device, grads[0].dtype
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"invert image_shape: expected (C, H, W); got {tuple(image_shape)}")
    mean_t = torch.as_tensor(finite_floats(np.asarray(mean), "invert mean", ndim=1), dtype=torch.float32)
    std_t = torch.as_tensor(finite_floats(np.asarray(std), "invert std", ndim=1), dtype=torch.float32)
    if len(mean_t) != shape[0] or len(std_t) != shape[0] or not bool((std_t > 0).all()):
        raise ValueError(
            f"invert mean/std: need {shape[0]} values each (std > 0) for image_shape {shape}; got {mean}, {std}"
        )
    _check_image_shape(model, shape, device, "invert image_shape")
    lower = (-mean_t / std_t).view(1, -1, 1, 1).to(device, dtype)
    upper = ((1 - mean_t) / std_t).view(1, -1, 1, 1).to(device, dtype)
    ids = list(range(count)) if target_ids is None else [int(i) for i in target_ids]
    if len(ids) != count:
        raise ValueError(f"invert target_ids: expected {count} ids (one per target); found {len(ids)}")
    index, head = _last_linear(model)
    if labels is None:
        y = grads[index].sum(dim=-1).argmin(dim=-1)
    else:
        y = _labels(labels, head.out_features, count, "invert labels").to(device)

    params, buffers = _state(model)
    per_example = _per_example_loss(model, loss_scale)
    names = list(params)

    def attack_loss(x: torch.Tensor, target: list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        candidate = grad(per_example)(params, buffers, x, label)  # create_graph is implicit under torch.func
        return gradient_cost([candidate[n] for n in names], target, config.cost) + config.tv * total_variation(x)

    batched = vmap(grad_and_value(attack_loss), in_dims=(0, 0, 0))
    losses_of = vmap(attack_loss, in_dims=(0, 0, 0))

    def start(restart: int, rows: list[int]) -> torch.Tensor:
        if config.init == "zeros":
            return torch.zeros((len(rows), *shape), device=device, dtype=dtype)
        return torch.stack([start_noise(seed, ids[i], restart, shape) for i in rows]).to(device, dtype)

    best_x = torch.zeros((count, *shape), device=device, dtype=dtype)
    best_loss = torch.full((count,), float("inf"), device=device, dtype=dtype)
    step = 0
    for restart in range(config.restarts):
        if config.optimizer == "adam":
            x, step = adam_steps(
                batched, start(restart, list(range(count))), grads, y, config, lower, upper, step, on_step
            )
        else:
            rows = []
            for i in range(count):
                one = [g[i : i + 1] for g in grads]
                xi, _ = lbfgs_steps(
                    batched, start(restart, [i]), one, y[i : i + 1], config, lower, upper, step, on_step
                )
                rows.append(xi)
            step += config.iterations
            x = torch.cat(rows)
        with torch.no_grad():
            final = losses_of(x, grads, y)
        better = (final < best_loss) | (restart == 0)  # the first restart fills in; then a lower loss wins
        best_x[better], best_loss[better] = x[better], final[better]
    return InversionResult(best_x, best_loss, y)
