"""Reading and checking what `synthpriv attack` is given: shadow logits, target logits, id lists, population.

Every array goes through ``privacy.checks`` where it enters: logits finite (a diverged shadow is named by its
model index, not dropped), labels integer and in range, ids unique and in the shadows' order, the target's
query views Q equal to the shadows', member / non-member / population lists disjoint and known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.checks import boolean_mask, class_labels, example_ids, finite_floats
from privacy.membership import check_disjoint, ids_hash

LOGIT_AXES = ("model", "example", "view", "class")


def _load(path: str, keys: set[str], what: str) -> dict[str, np.ndarray]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--{what}: {file} does not exist")
    try:
        with np.load(file, allow_pickle=False) as data:
            missing = keys - set(data.files)
            if missing:
                raise ValueError(f"--{what}: {file} lacks {sorted(missing)} (has {sorted(data.files)})")
            return {k: data[k] for k in data.files}
    except (OSError, EOFError) as err:  # not an npz, truncated, or holding pickled objects
        raise ValueError(f"--{what}: {file} is not a readable npz file of plain arrays ({err})") from err


def load_shadows(path: str) -> dict[str, np.ndarray]:
    """Read and check a shadow-logits file (see ``tools.attack``): logits become (K, N, Q, C) float64.

    Raises:
        ValueError: naming the file, the key and the first offending model / example.
    """
    data = _load(path, {"logits", "labels", "ids", "mask"}, "shadows")
    logits = data["logits"]
    if np.ndim(logits) == 3:
        logits = logits[:, :, None, :]
    logits = data["logits"] = finite_floats(logits, f"--shadows {path} 'logits'", LOGIT_AXES, ndim=4)
    k, n, _, c = logits.shape
    if c < 2:
        raise ValueError(f"--shadows {path} 'logits': expected at least 2 classes; found C={c}")
    data["mask"] = boolean_mask(data["mask"], (k, n), f"--shadows {path} 'mask' (logits are for K={k}, N={n})")
    data["labels"] = class_labels(data["labels"], c, f"--shadows {path} 'labels'", count=n)
    data["ids"] = np.asarray(example_ids(data["ids"], f"--shadows {path} 'ids'", count=n))
    if "ids_hash" in data and str(data["ids_hash"]) != ids_hash(list(data["ids"])):
        raise ValueError(f"--shadows: {path} ids do not match its ids_hash (the file was edited or reordered)")
    if "population" in data:
        data["population"] = boolean_mask(data["population"], (n,), f"--shadows {path} 'population'")
    return data


def load_target_scores_input(target: str, shadows: dict[str, np.ndarray]) -> np.ndarray:
    """The target's logits as (N, Q, C) float64, in the shadows' example order and with their Q views."""
    data = _load(target, {"logits", "ids"}, "target")
    _k, _n, q, c = shadows["logits"].shape
    logits = data["logits"]
    if np.ndim(logits) == 2:
        logits = logits[:, None, :]
    logits = finite_floats(logits, f"--target {target} 'logits'", LOGIT_AXES[1:], ndim=3)
    ids = example_ids(data["ids"], f"--target {target} 'ids'", count=len(logits))
    if ids_hash(ids) != ids_hash(list(shadows["ids"])):
        raise ValueError(
            f"--target: {target} holds logits for other examples or in another order than --shadows; "
            "predict on the same split with the same data settings"
        )
    if logits.shape[-1] != c:
        raise ValueError(f"--target has {logits.shape[-1]} classes but the shadows have {c}")
    if logits.shape[1] != q:
        raise ValueError(
            f"--target {target}: logits hold Q={logits.shape[1]} query view(s) per example but the shadows were "
            f"queried with Q={q}; LiRA compares the same views, so query the target like the shadows "
            "(use --target_checkpoint, which reuses the shadows' query settings)"
        )
    return logits


def read_ids(path: str, option: str, known: list[str]) -> list[str]:
    """Ids listed one per line in ``path`` (``--option``), each among ``known`` and listed once."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--{option}: {file} does not exist")
    ids = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"--{option}: {file} lists no ids")
    unknown = sorted(set(ids) - set(known))
    if unknown:
        raise ValueError(f"--{option}: {len(unknown)} ids are not among the examples, e.g. {unknown[:3]}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"--{option}: {file} lists {len(ids) - len(set(ids))} ids more than once")
    return ids


def design_file(shadows: str, name: str) -> Path:
    """A file the shadows' MembershipDataModule wrote next to them (``membership/<name>``)."""
    return Path(shadows).parent / "membership" / name


@dataclass
class Evaluation:
    """Who is evaluated: positions (in the shadows' order) of members and non-members, and the population."""

    keep: np.ndarray  # (M,) positions of the evaluated examples
    is_member: np.ndarray  # (M,) bool
    population: np.ndarray | None  # positions of RMIA's known non-members (never in ``keep``)
    members_file: str | None = None


def target_evaluation(
    shadows_path: str,
    shadows: dict[str, np.ndarray],
    members_file: str | None,
    non_members_file: str | None,
    population: np.ndarray | None,
) -> Evaluation:
    """Members, non-members and population for an explicit target (files default to the shadows' design)."""
    ids = [str(i) for i in shadows["ids"]]
    if members_file is None:
        members = design_file(shadows_path, "target_members.txt")
        if not members.is_file():
            raise ValueError(
                f"--members_file is required with a target: {members} does not exist; give the ids the target "
                "trained on, one per line"
            )
        members_file = str(members)
        default_non = design_file(shadows_path, "target_non_members.txt")
        if non_members_file is None and default_non.is_file():
            non_members_file = str(default_non)
    members = read_ids(members_file, "members_file", ids)
    pop_ids = set() if population is None else {ids[i] for i in population}
    if non_members_file is None:
        member_set = set(members)
        non_members = [i for i in ids if i not in member_set and i not in pop_ids]
    else:
        non_members = read_ids(non_members_file, "non_members_file", ids)
        check_disjoint(members, non_members)
    if pop_ids:
        both = sorted(pop_ids & set(members))
        if both:
            raise ValueError(
                f"the RMIA population holds {len(both)} of the target's members (e.g. {both[:3]}); it must hold "
                "known non-members only"
            )
        overlap = sorted(pop_ids & set(non_members))
        if overlap:
            raise ValueError(
                f"{len(overlap)} evaluated non-members are also in the RMIA population (e.g. {overlap[:3]}); the "
                "population must be kept apart from the evaluated examples"
            )
    position = {example: k for k, example in enumerate(ids)}
    keep = np.sort([position[i] for i in [*members, *non_members]])
    is_member = np.isin(np.asarray(ids)[keep], members)
    if is_member.all() or not is_member.any():
        raise ValueError(f"--members_file {members_file}: the evaluated examples must hold members and non-members")
    return Evaluation(keep, is_member, population, members_file)


def resolve_population(
    shadows_path: str, shadows: dict[str, np.ndarray], population_file: str | None
) -> np.ndarray | None:
    """Positions of RMIA's population: ``--population_file``, else the design's flags in the shadows file."""
    ids = [str(i) for i in shadows["ids"]]
    if population_file is not None:
        listed = set(read_ids(population_file, "population_file", ids))
        return np.asarray([k for k, i in enumerate(ids) if i in listed])
    if "population" in shadows and shadows["population"].any():
        return np.flatnonzero(shadows["population"])
    return None
