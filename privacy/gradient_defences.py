"""Gradient defences: edits of parameter gradients that limit what gradient inversion can recover.

SemSim's victims (``seeds.md`` §2.2 step 1, ``--defense``) apply them in the training loop before each optimiser step:
``gaussian_1e-3`` / ``gaussian_1e-2`` (additive Gaussian noise), ``lap_1e-3/1e-2/1e-1`` (additive Laplace noise) and
``prune_p`` (zero the p % smallest-magnitude entries). The same function serves the attacker's side (the defence
applied to the gradient the attacker observes, which the original lacks) and a training-time callback.

One call defends ONE gradient set (one client update): a list with one tensor per parameter. Noise is drawn from
the given ``torch.Generator`` (on the CPU or on the gradients' device), so a seeded generator gives the same edit
on any number of devices; pruning is deterministic (ties broken by position).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

DefenceKind = Literal["none", "gaussian", "laplace", "prune"]
DEFENCE_KINDS: tuple[str, ...] = ("none", "gaussian", "laplace", "prune")


def check_defence(kind: str, scale: float = 0.0, percent: float = 0.0) -> None:
    """Refuse an unknown kind or out-of-range settings, naming the value (call once where options enter)."""
    if kind not in DEFENCE_KINDS:
        raise ValueError(f"gradient defence: kind must be one of {', '.join(DEFENCE_KINDS)}; got {kind!r}")
    if kind in ("gaussian", "laplace") and not (scale > 0 and scale < float("inf")):
        raise ValueError(f"gradient defence {kind!r}: scale must be a positive finite number; got {scale}")
    if kind == "prune" and not 0.0 <= percent <= 100.0:
        raise ValueError(f"gradient defence 'prune': percent must lie in [0, 100]; got {percent}")


def _noise(shape: torch.Size, kind: str, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    if kind == "gaussian":
        sample = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    else:  # Laplace(0, 1) by the inverse CDF of u ~ U(-1/2, 1/2): -sign(u) log(1 - 2|u|)
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64) - 0.5
        sample = -torch.sign(u) * torch.log1p(-2 * u.abs().clamp_max(0.5 - 1e-16))
    return sample.to(like.device, like.dtype)


def defend(
    grads: Sequence[torch.Tensor],
    kind: DefenceKind = "none",
    scale: float = 0.0,
    percent: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Apply one gradient defence to one set of parameter gradients.

    Args:
        grads: one gradient tensor per parameter (e.g. ``[p.grad for p in model.parameters()]``); not modified.
        kind: ``"none"`` (returned unchanged), ``"gaussian"`` (add N(0, scale²) noise to every entry),
            ``"laplace"`` (add Laplace(0, b=scale) noise, std = √2·scale) or ``"prune"`` (in every tensor
            separately, zero the ``floor(numel · percent / 100)`` entries of smallest magnitude).
        scale: noise std (gaussian) or Laplace scale b (laplace); SemSim uses 1e-3, 1e-2 (and 1e-1 for Laplace).
        percent: share of entries zeroed per tensor by ``prune``, in [0, 100]; SemSim uses 10 ... 99.
        generator: source of the noise (seed it for reproducible edits); None uses torch's global generator.

    Returns:
        New tensors, same shapes, dtypes and devices as ``grads``.
    """
    check_defence(kind, scale, percent)
    out: list[torch.Tensor] = []
    for g in grads:
        if not isinstance(g, torch.Tensor) or not torch.is_floating_point(g):
            raise ValueError(f"gradient defence: expected floating-point tensors; got {getattr(g, 'dtype', type(g))}")
        if kind == "none":
            out.append(g.clone())
        elif kind in ("gaussian", "laplace"):
            out.append(g + scale * _noise(g.shape, kind, generator, g))
        else:
            k = int(g.numel() * percent / 100.0)
            flat = g.detach().flatten().clone()
            if k > 0:
                smallest = torch.argsort(flat.abs(), stable=True)[:k]
                flat[smallest] = 0
            out.append(flat.view_as(g))
    return out
