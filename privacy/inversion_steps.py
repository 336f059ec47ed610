"""The pieces of a gradient-inversion attack (``privacy/inversion.py``): the gradient-matching costs, total
variation, per-target random starts and the optimiser loops on the reconstruction ``x_hat``.

``adam_steps`` / ``lbfgs_steps`` take ``batched(x, grads, y) -> (d cost / d x, cost)`` over a stack of targets and
an ``InversionConfig``; they return the final ``x_hat`` (clamped to ``[lower, upper]`` after every step when
``config.boxed``) and the step counter advanced by ``config.iterations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of (..., H, W) images: ``mean|x[..., :, 1:] - x[..., :, :-1]| + mean|dy|`` (Geiping §4)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def gradient_cost(candidate: Sequence[torch.Tensor], target: Sequence[torch.Tensor], cost: str) -> torch.Tensor:
    """Distance between one example's candidate and observed gradients (lists over all parameters).

    ``"sim"``: ``1 - <g, g*> / (||g|| ||g*||)`` over all layers concatenated (Geiping et al. 2020, §4 eq. 4);
    ``"l2"``: ``sum_l ||g_l - g*_l||^2`` (Zhu et al. 2019, §3 eq. 4).
    """
    if cost == "l2":
        return sum(((g - t) ** 2).sum() for g, t in zip(candidate, target))
    dot = sum((g * t).sum() for g, t in zip(candidate, target))
    norm_g = sum((g * g).sum() for g in candidate).sqrt()
    norm_t = sum((t * t).sum() for t in target).sqrt()
    return 1 - dot / (norm_g * norm_t).clamp_min(1e-30)


def start_noise(seed: int, target_id: int, restart: int, shape: Sequence[int]) -> torch.Tensor:
    """(C, H, W) standard-normal start of one target (``init="randn"``), on the CPU.

    Drawn from its own ``torch.Generator`` seeded by ``(seed, target_id, restart)`` through numpy's SeedSequence,
    so it does not depend on which other targets share the batch.
    """
    state = np.random.SeedSequence([int(seed), int(target_id), int(restart)]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    return torch.randn(tuple(shape), generator=generator)


def lr_at(config: Any, iteration: int) -> float:
    """The learning rate at ``iteration``: ``config.lr``, times 0.1 at 3/8, 5/8 and 7/8 of ``config.iterations``
    when ``config.lr_decay`` (Geiping et al. 2020, §4)."""
    if not config.lr_decay:
        return config.lr
    milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    return config.lr * 0.1 ** sum(iteration >= m for m in milestones)


def adam_steps(batched, x0, grads, y, config, lower, upper, step, on_step):
    """Adam (optionally on the gradient's sign) on the stacked x_hat; element-wise, so targets stay independent."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=config.lr)
    for it in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, it)
        g, loss = batched(x.detach(), grads, y)
        x.grad = g.sign() if config.signed else g
        optimizer.step()
        if config.boxed:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, upper), lower))
        if on_step is not None:
            on_step(step + it, loss.detach())
    return x.detach(), step + config.iterations


def lbfgs_steps(batched, x0, grads, y, config, lower, upper, step, on_step):
    """L-BFGS on ONE target (DLG); its line search couples all entries, so targets go one at a time."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=config.lr, max_iter=config.lbfgs_max_iter)
    first: list[torch.Tensor] = []  # the loss at the start of each step (what Adam's on_step reports too)

    def closure() -> torch.Tensor:
        g, loss = batched(x.detach(), grads, y)
        x.grad = g.sign() if config.signed else g
        first.append(loss.detach())
        return loss.sum()

    for it in range(config.iterations):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, it)
        first.clear()
        optimizer.step(closure)
        if config.boxed:
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, upper), lower))
        if on_step is not None:
            on_step(step + it, first[0])
    return x.detach(), step + config.iterations
