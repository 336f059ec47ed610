"""Which examples a fit trained on: recorded in its run folder, checked on resume and by membership attacks.

Every ``fit`` whose data module has ``train_example_ids()`` writes, from rank zero and before the first step
(so an interrupted fit has them too):

- ``<run>/trained_ids.txt``: the ids of the training examples, one per line, in the training set's index order;
  the same strings the membership design uses (``source.membership_pool('train').ids``, ``target_members.txt``);
- ``<run>/trained_ids.json``: ``{"file", "count", "ids_hash", "data_module"}`` (``ids_hash``: sha256 over the ids
  in order, as ``privacy.membership.ids_hash``); the txt is written first, so the json marks a complete record.

``fit_summary.json`` repeats count and hash under ``trained_ids`` (or says why nothing was recorded). A fit into a
run folder that holds a record (a resume) must train on exactly the recorded ids, else it is refused. Attacks call
``check_members_trained`` so a member list the target never trained on is refused instead of scored.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from privacy.membership import ids_hash
from tools.files import write_json_atomic, write_text_atomic

TRAINED_IDS = "trained_ids.txt"
TRAINED_IDS_RECORD = "trained_ids.json"
_EXAMPLES = 3  # ids quoted in an error message


def training_ids_of(datamodule: Any) -> list[str] | None:
    """``datamodule.train_example_ids()``, or None for a data module that does not list its training examples."""
    method = getattr(datamodule, "train_example_ids", None)
    if method is None:
        return None
    return [str(i) for i in method()]


def record_trained_ids(run_dir: Path, datamodule: Any, write: bool = True) -> dict[str, Any]:
    """Record (``write``: rank zero) or, when the run folder already holds a record, check the training ids.

    Returns the entry for ``fit_summary.json``. Raises ValueError when the recorded ids differ from this fit's
    (a resume with other train_fractions, folders, split seed or skipped files); every rank checks, so all stop.
    """
    run_dir = Path(run_dir)
    ids = training_ids_of(datamodule)
    name = type(datamodule).__name__ if datamodule is not None else "no data module"
    if ids is None:
        return {"recorded": False, "reason": f"{name} does not list its training examples (no train_example_ids)"}
    recorded = read_trained_ids(run_dir)
    if recorded is not None and recorded != ids:
        raise ValueError(
            f"{run_dir / TRAINED_IDS}: this run trained on {len(recorded)} examples (ids hash "
            f"{ids_hash(recorded)[:12]}), but the resumed fit's data gives {len(ids)} (hash {ids_hash(ids)[:12]}; "
            f"{_difference(recorded, ids)}); resume with the run's original data options (train_roots, "
            "train_fractions, val_fraction, split_seed, ...) or start a new run (--run.name)"
        )
    entry = {"recorded": True, "file": TRAINED_IDS, "count": len(ids), "ids_hash": ids_hash(ids), "data_module": name}
    if write and recorded is None:
        write_text_atomic(run_dir / TRAINED_IDS, "".join(f"{i}\n" for i in ids))
        write_json_atomic(run_dir / TRAINED_IDS_RECORD, {k: v for k, v in entry.items() if k != "recorded"})
    return entry


def run_folder_of(target: str | Path) -> Path:
    """The run folder of a target: the folder itself, or for a checkpoint file ``<run>/checkpoints/x.ckpt`` its run."""
    path = Path(target)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def read_trained_ids(run_dir: str | Path) -> list[str] | None:
    """The recorded training ids of a run (a run folder or a checkpoint file inside it); None when not recorded.

    Raises ValueError when ``trained_ids.txt`` does not match the count and hash in ``trained_ids.json``.
    """
    folder = run_folder_of(run_dir)
    path = folder / TRAINED_IDS
    if not path.is_file():
        return None
    ids = path.read_text(encoding="utf-8").splitlines()
    record = folder / TRAINED_IDS_RECORD
    if record.is_file():
        try:
            meta = json.loads(record.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{record} is not valid JSON ({err})") from err
        if meta.get("count") != len(ids) or meta.get("ids_hash") != ids_hash(ids):
            raise ValueError(
                f"{path} holds {len(ids)} ids (hash {ids_hash(ids)[:12]}) but {record} records {meta.get('count')} "
                f"(hash {str(meta.get('ids_hash'))[:12]}): the file was edited or truncated"
            )
    return ids


def check_members_trained(
    members: list[str], run_dir: str | Path, what: str, members_from: str = "the member list"
) -> bool:
    """Refuse a member list that is not a subset of what the target run trained on.

    Args:
        members: the example ids claimed as the target's members.
        run_dir: the target's run folder (or a checkpoint file inside ``<run>/checkpoints``).
        what: how the target is named in messages, e.g. ``"--target_checkpoint runs/x/teacher"``.
        members_from: where the member list comes from, e.g. the path of ``target_members.txt``.

    Returns True when checked, False (after a UserWarning) when the run recorded no training ids (a run from
    before this record, or a data module without ``train_example_ids``). Raises ValueError when some members
    are not among the trained ids.
    """
    trained = read_trained_ids(run_dir)
    if trained is None:
        warnings.warn(
            f"{what}: {run_folder_of(run_dir)} has no {TRAINED_IDS}, so it cannot be checked that the "
            f"{len(members)} members in {members_from} are examples the target trained on",
            UserWarning,
            stacklevel=2,
        )
        return False
    known = set(trained)
    missing = [m for m in members if str(m) not in known]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_EXAMPLES])
        raise ValueError(
            f"{what} trained on {len(trained)} examples ({run_folder_of(run_dir) / TRAINED_IDS}); {len(missing)} of "
            f"the {len(members)} members in {members_from} are not among them (e.g. {shown}): the member list does "
            "not describe this target (different train_fractions, folders or split seed?)"
        )
    return True


def _difference(old: list[str], new: list[str]) -> str:
    old_set, new_set = set(old), set(new)
    gone = [i for i in old if i not in new_set]
    added = [i for i in new if i not in old_set]
    if not gone and not added:
        return "same ids in another order"
    parts = []
    if gone:
        parts.append(f"{len(gone)} recorded ids missing, e.g. {gone[0]!r}")
    if added:
        parts.append(f"{len(added)} new ids, e.g. {added[0]!r}")
    return ", ".join(parts)
