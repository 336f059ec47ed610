"""Query a target checkpoint on exactly the examples and views the shadow ensemble was queried on.

The shadows' run folder holds the ``config.yaml`` of its fit; its ``data`` section rebuilds the same
MembershipDataModule, so the target sees the same example order, resizing, normalisation and query views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule, LightningModule

from privacy.membership import ids_hash
from tools.files import file_sha256, write_bytes_atomic


def load_run_datamodule(run_dir: Path) -> LightningDataModule:
    """Instantiate the data module recorded in ``run_dir/config.yaml``."""
    import datamodules  # noqa: F401  (short class names in configs)

    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} does not exist: the shadows file must sit in the run folder of its `synthpriv fit`"
        )
    config = yaml.safe_load(config_file.read_text())
    if not isinstance(config, dict) or "data" not in config:
        raise ValueError(f"{config_file} has no 'data' section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    parsed = parser.parse_object({"data": config["data"]})
    return parser.instantiate_classes(parsed).data


def resolve_target_checkpoint(path: str) -> str:
    """A checkpoint file as is; a run folder gives its best checkpoint (or last.ckpt when none is recorded)."""
    from tools.run_dirs import resolve_checkpoint

    folder = Path(path)
    if not folder.is_dir():
        if not folder.is_file():
            raise FileNotFoundError(f"--target_checkpoint: {folder} does not exist")
        return path
    try:
        return resolve_checkpoint(folder, "best")
    except FileNotFoundError:
        return resolve_checkpoint(folder, "last")


def load_target(checkpoint: Path, device: torch.device) -> LightningModule:
    """The LightningModule of a checkpoint; its class comes from the run's config.yaml (default ImageClassifier)."""
    import lightning_modules

    if not checkpoint.is_file():
        raise FileNotFoundError(f"--target_checkpoint: {checkpoint} does not exist")
    class_name = "ImageClassifier"
    run_config = checkpoint.parent.parent / "config.yaml"
    if run_config.is_file():
        saved = yaml.safe_load(run_config.read_text()) or {}
        class_name = str((saved.get("model") or {}).get("class_path", class_name)).rsplit(".", 1)[-1]
    module_class: Any = getattr(lightning_modules, class_name, None)
    if module_class is None:
        raise ValueError(f"--target_checkpoint: {run_config} names model {class_name!r}, which synthpriv does not know")
    model = module_class.load_from_checkpoint(checkpoint, map_location=device, weights_only=True)
    return model.eval()


def compute_target_logits(checkpoint: str, shadows: str, out_file: Path, device: str = "cpu") -> Path:
    """Write ``out_file`` (npz: logits (M, Q, C), ids) for the target at ``checkpoint``."""
    torch_device = torch.device(device)
    datamodule = load_run_datamodule(Path(shadows).parent)
    datamodule.setup("predict")
    with np.load(shadows, allow_pickle=False) as saved:
        saved_ids, classes = [str(i) for i in saved["ids"]], saved["logits"].shape[-1]
    if ids_hash(datamodule.example_ids()) != ids_hash(saved_ids):
        raise ValueError(
            f"the data settings in {Path(shadows).parent / 'config.yaml'} give other examples than {shadows} holds; "
            "the data folders changed since the shadows were queried"
        )
    model = load_target(Path(checkpoint), torch_device)
    num_classes = model.hparams.get("num_classes")
    if num_classes != classes:
        raise ValueError(f"--target_checkpoint has {num_classes} classes but the shadows have {classes}")
    chunks = []
    with torch.no_grad():
        for batch in datamodule.predict_dataloader():
            views = batch["image"].to(torch_device)
            b, q = views.shape[:2]
            chunks.append(model(views.flatten(0, 1)).float().view(b, q, -1).cpu())
    logits = torch.cat(chunks).numpy()
    payload = {"logits": logits, "ids": np.asarray(saved_ids), "checkpoint": np.asarray(str(checkpoint))}
    return write_bytes_atomic(out_file, lambda handle: np.savez(handle, **payload))


def members_via_setting(members_via: str) -> dict[str, Any]:
    """The attack's ``settings["members_via"]``: the run folder (resolved) and the sha256 of its trained ids.

    ``trained_ids_sha256`` is None when the run recorded no ids (the member check then warns). Raises
    FileNotFoundError when ``members_via`` does not exist.
    """
    from tools.trained_ids import TRAINED_IDS, run_folder_of

    if not Path(members_via).exists():
        raise FileNotFoundError(f"--members_via: {members_via} does not exist")
    run = run_folder_of(members_via).resolve()
    ids = run / TRAINED_IDS
    return {"run": str(run), "trained_ids_sha256": file_sha256(ids) if ids.is_file() else None}


def check_target_trained_on(
    checkpoint: str, members: list[str], members_from: str, control: bool = False, members_via: str | None = None
) -> None:
    """Check the member list against the ids the target's fit recorded (``<run>/trained_ids.txt``).

    A target must have trained on every listed member (else its "members" are partly non-members and the AUC is
    diluted towards 0.5 without a word); a *control* (``control``: a model attacked with another model's member
    list to show chance-level figures) must have trained on none of them. A target that learned the members
    indirectly (``members_via``: the run that trained on them, e.g. the teacher of a student trained on synthetic
    images) is checked in two steps: ``members_via`` must have trained on every member, the target itself on none
    (one that did is a direct target). A run without a record (fitted before synthpriv recorded ids) is accepted
    with a warning.

    Raises:
        ValueError: naming the run, the member file, how many members disagree and examples of them.
    """
    from tools.trained_ids import check_members_trained, read_trained_ids, run_folder_of

    what = f"--target_checkpoint {checkpoint}"
    if members_via is not None:
        _check_members_via(checkpoint, list(members), members_from, members_via)
        return
    if not control:
        check_members_trained(list(members), checkpoint, what, members_from)
        return
    trained = read_trained_ids(checkpoint)
    if trained is None:
        check_members_trained(list(members), checkpoint, what, members_from)  # warns that nothing is recorded
        return
    seen = sorted(set(members) & set(trained))
    if seen:
        raise ValueError(
            f"{what} is attacked as a control (--control true) but {run_folder_of(checkpoint)} trained on "
            f"{len(seen)} of the {len(members)} members in {members_from} (e.g. {seen[:3]}); a control must never "
            "have seen them"
        )


def _check_members_via(checkpoint: str, members: list[str], members_from: str, members_via: str) -> None:
    """``members_via`` trained on every member; the target (learning them through it) trained on none."""
    import warnings

    from tools.trained_ids import TRAINED_IDS, check_members_trained, read_trained_ids, run_folder_of

    via = f"--members_via {members_via} (the run the target learned its members through)"
    check_members_trained(members, members_via, via, members_from)
    trained = read_trained_ids(checkpoint)
    target = run_folder_of(checkpoint)
    if trained is None:
        warnings.warn(
            f"--target_checkpoint {checkpoint}: {target} has no {TRAINED_IDS}, so it cannot be checked that the "
            f"target did not train directly on the {len(members)} members in {members_from}",
            UserWarning,
            stacklevel=3,
        )
        return
    seen = sorted(set(members) & set(trained))
    if seen:
        raise ValueError(
            f"--target_checkpoint {checkpoint} trained directly on {len(seen)} of the {len(members)} members in "
            f"{members_from} ({target / TRAINED_IDS}, e.g. {seen[:3]}), so it is a direct target; --members_via is "
            "for targets that learned the members only through another run (a student of the teacher): attack "
            "it without --members_via"
        )
