"""Is a shadows run a fair reference for a target? Class names and data must match; the recipe should.

Checking (``check_shadows_match_target``, called by ``synthpriv attack --target_checkpoint``):

- refused (ValueError, one line listing ``key: target -> shadows``): other class names (from the checkpoints'
  ``hyper_parameters``, else from the data modules), another data class, or any data option that changes which
  examples or which pixels the models see (every option of the target's ``data`` section except
  ``DATA_IGNORED``: loader and test-time settings; ``class_names`` is compared as the resolved names). For a
  *control* (a model attacked with another model's member list) the options that select the examples
  (``DATA_EXAMPLE_KEYS``: folders, fractions, val split, split seed) may differ by design; pixels and class names
  may not.
- warned (returned strings): recipe differences (model recipe, epochs, precision, batch size) and, for feature
  data, anonymiser differences (``DATA_ANONYMISER_KEYS``: shadows on real features model an attacker who ignores
  the anonymiser). A mismatched recipe weakens the attack but does not invalidate it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.shadow_config import (
    CONFIG,
    DATA_ANONYMISER_KEYS,
    DATA_EXAMPLE_KEYS,
    DATA_IGNORED,
    PATH_KEYS,
    PROBE_RECIPE_KEYS,
    RECIPE_KEYS,
    _init_args,
    _read_config,
    _short,
    _show,
    _trained_epochs,
)
from tools.trained_ids import run_folder_of


def _checkpoint_class_names(checkpoint: Path | None) -> list[str] | None:
    if checkpoint is None or not checkpoint.is_file():
        return None
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    names = (saved.get("hyper_parameters") or {}).get("class_names")
    return [str(n) for n in names] if names is not None else None


def _shadows_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    if last.is_file():
        return last
    found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    return found[-1] if found else None


def _target_checkpoint(target: Path) -> Path | None:
    if target.is_file():
        return target
    from tools.target_logits import resolve_target_checkpoint

    try:
        return Path(resolve_target_checkpoint(str(target)))
    except FileNotFoundError:
        return None


def _class_names(run_dir: Path, checkpoint: Path | None, has_config: bool) -> list[str] | None:
    """Class names from a checkpoint's hyper_parameters, else from the run's data module."""
    names = _checkpoint_class_names(checkpoint)
    if names is not None or not has_config:
        return names
    from tools.target_logits import load_run_datamodule

    return list(load_run_datamodule(run_dir).class_names)


def _as_paths(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _same_path(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _same_data_value(key: str, a: Any, b: Any) -> bool:
    if key not in PATH_KEYS:
        return a == b
    a, b = _as_paths(a), _as_paths(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_path(x, y) for x, y in zip(a, b, strict=True))
    return _same_path(a, b)


def _applies(key: str, target: dict[str, Any], shadows: dict[str, Any]) -> bool:
    """SGD options matter only with SGD, multistep options only with multistep."""
    if key in ("momentum", "nesterov"):
        return "sgd" in (target.get("optimizer"), shadows.get("optimizer"))
    if key in ("milestones", "gamma"):
        return "multistep" in (target.get("scheduler"), shadows.get("scheduler"))
    return True


def check_shadows_match_target(shadows_run: Path, target_run: Path, control: bool = False) -> list[str]:
    """Refuse shadows that were not trained on the target's data; return warnings for recipe differences.

    Rules in the module docstring. ``shadows_run``: the shadows' run folder (or its ``shadows.npz``);
    ``target_run``: the target's run folder or a checkpoint file in ``<run>/checkpoints``. A target checkpoint
    outside a run folder (no config.yaml) has only its class names checked (and a warning says so).
    ``control``: the target is a control trained on other examples by design; only pixels and class names must
    match.

    Returns:
        One string per recipe difference (``key: target -> shadows``), empty when the shadows copy the target.

    Raises:
        FileNotFoundError: the shadows' config.yaml is missing.
        ValueError: the shadows run is not a ShadowEnsemble on a MembershipDataModule, or the class names, the
            data class or a data option that changes the examples or pixels differ (one line, every key listed).
    """
    shadows_run = Path(shadows_run)
    if shadows_run.is_file():
        shadows_run = shadows_run.parent
    target_path = Path(target_run)
    target_dir = run_folder_of(target_path)
    shadows = _read_config(shadows_run, "shadows run")
    shadow_model, shadow_data = _short(shadows["model"].get("class_path")), shadows.get("data") or {}
    if shadow_model != "ShadowEnsemble" or _short(shadow_data.get("class_path")) != "MembershipDataModule":
        raise ValueError(
            f"shadows run {shadows_run}: {shadows_run / CONFIG} has model {shadow_model!r} on data "
            f"{_short(shadow_data.get('class_path'))!r}; expected ShadowEnsemble on MembershipDataModule"
        )
    shadow_args = _init_args(shadow_data)
    source = shadow_args.get("source") or {}
    has_target_config = (target_dir / CONFIG).is_file()
    warned: list[str] = []
    problems: list[str] = []

    target_names = _class_names(target_dir, _target_checkpoint(target_path), has_target_config)
    shadow_names = _class_names(shadows_run, _shadows_checkpoint(shadows_run), True)
    if target_names is None:
        warned.append(f"target {target_path}: its checkpoint records no class names; class names not compared")
    elif shadow_names != target_names:
        problems.append(f"class names {target_names} -> {shadow_names}")
    if not has_target_config:
        warned.append(
            f"target {target_path}: {target_dir / CONFIG} not found; only class names were compared, not the data "
            "source or the recipe"
        )
        if problems:
            raise ValueError(_refusal(shadows_run, target_path, problems, control))
        return warned
    target = _read_config(target_dir, "target")

    data = target.get("data") or {}
    if _short(data.get("class_path")) != _short(source.get("class_path")):
        problems.append(f"data.class_path: {_short(data.get('class_path'))} -> {_short(source.get('class_path'))}")
    target_data, shadow_source = _init_args(data), _init_args(source)
    for key in sorted(set(target_data) | set(shadow_source)):
        if key in DATA_IGNORED or (control and key in DATA_EXAMPLE_KEYS):
            continue
        old, new = target_data.get(key), shadow_source.get(key)
        if _same_data_value(key, old, new):
            continue
        change = f"data.init_args.{key}: {_show(old)} -> {_show(new)}"
        if key in DATA_ANONYMISER_KEYS:
            warned.append(f"{change} (the shadows train on other inputs than the target's anonymiser gives)")
        else:
            problems.append(change)
    if problems:
        raise ValueError(_refusal(shadows_run, target_path, problems, control))

    warned += _recipe_warnings(target, shadows, target_dir)
    return warned


def _refusal(shadows_run: Path, target: Path, problems: list[str], control: bool) -> str:
    fix = (
        "a control may train on other examples, but not on other classes or pixels"
        if control
        else f"derive the shadows from the target: synthpriv shadows-config {run_folder_of(target)} <shadows.yaml>"
    )
    return (
        f"shadows run {shadows_run} was not trained on the data of the target {target} (target -> shadows): "
        f"{'; '.join(problems)}; the attack would compare models of different data; {fix}"
    )


def _recipe_warnings(target: dict[str, Any], shadows: dict[str, Any], target_dir: Path) -> list[str]:
    tail = " (shadows trained otherwise than the target weaken the attack; it stays valid)"
    target_class = _short(target["model"].get("class_path"))
    t_model, s_model = _init_args(target["model"]), _init_args(shadows["model"])
    warned = []
    if target_class == "ImageClassifier":
        keys: tuple[str, ...] = RECIPE_KEYS
        for key in ("weights", "teacher_checkpoint"):
            if t_model.get(key) is not None:
                warned.append(
                    f"model.init_args.{key}: {_show(t_model[key])} -> (none in ShadowEnsemble): the target was "
                    f"{'pretrained' if key == 'weights' else 'distilled'}, the shadows were not{tail}"
                )
    elif target_class == "LinearProbe":
        keys = PROBE_RECIPE_KEYS
    else:
        return [f"target model {target_class!r}: recipe not compared (no known ShadowEnsemble counterpart)"]
    for key in keys:
        if key in t_model and _applies(key, t_model, s_model) and t_model[key] != s_model.get(key):
            warned.append(f"model.init_args.{key}: {_show(t_model[key])} -> {_show(s_model.get(key))}{tail}")

    t_trainer, s_trainer = target.get("trainer") or {}, shadows.get("trainer") or {}
    t_epochs, trained = t_trainer.get("max_epochs"), _trained_epochs(target_dir)
    if trained is not None and t_epochs is not None and trained < t_epochs:
        if s_trainer.get("max_epochs") != trained:
            warned.append(
                f"trainer.max_epochs: the target stopped after {trained} of {t_epochs} epochs -> "
                f"{_show(s_trainer.get('max_epochs'))}{tail}"
            )
    elif t_epochs != s_trainer.get("max_epochs"):
        warned.append(f"trainer.max_epochs: {_show(t_epochs)} -> {_show(s_trainer.get('max_epochs'))}{tail}")
    for key in ("max_steps", "precision"):
        if t_trainer.get(key) != s_trainer.get(key):
            warned.append(f"trainer.{key}: {_show(t_trainer.get(key))} -> {_show(s_trainer.get(key))}{tail}")
    t_batch, s_batch = _init_args(target.get("data")).get("batch_size"), _init_args(shadows["data"]).get("batch_size")
    if t_batch is not None and t_batch != s_batch:
        warned.append(f"data.init_args.batch_size: {_show(t_batch)} -> {_show(s_batch)} (per shadow model){tail}")
    return warned
