"""Shadows for a user's own target: derive their config from the target's run, and check a shadows run against it.

LiRA and RMIA compare the target with shadow models trained *like the target* on the *target's data*, so the
shadows' configuration is not the user's to invent: it is read from the target run's ``config.yaml`` (the fully
resolved config its ``synthpriv fit`` saved).

Deriving (``derive_shadows_config``, ``synthpriv shadows-config``), for an ``ImageClassifier`` target:

- model: ``ShadowEnsemble`` with the target's recipe copied key for key (``RECIPE_KEYS``: backbone,
  bn_momentum, label_smoothing, mixup_alpha, optimizer, lr, weight_decay, momentum, nesterov, scheduler,
  milestones, gamma); num_classes, class_names and image_size are linked from the data as for the target.
- refused: a target started from pretrained ``weights`` (ShadowEnsemble builds every shadow from random
  initialisation and has no weights option, so its shadows would not be trained like the target) and a
  distilled target (``teacher_checkpoint``: ShadowEnsemble trains on hard labels, and shadows would need the
  teacher's soft labels on their own members). ``LinearProbe`` targets are refused too: a probe trains with
  ReduceLROnPlateau and early stopping on val/loss, which ShadowEnsemble cannot copy, and the CVAE study's shadows
  deliberately train on real (or member-anonymised) features; write those by hand (``configs/cvae/shadows.yaml``).
  Any other target option without a ShadowEnsemble counterpart is named in a warning.
- data: ``MembershipDataModule`` whose ``source`` is the target's ``data`` section verbatim (same folders,
  fractions, split seed, image size, transform, normalisation, so the pool's example ids are the target's ids),
  ``target_split: train``, the target's training batch size as the per-model batch size, and the pool
  ``[train, val]`` when the target has a validation split, else ``[train, test]``. The validation split is the
  preferred holdout: it is the target's own held-out data (drawn from its training folders when split off by
  ``val_fraction``), so its examples are the closest non-members, and the target never trained on them; the one
  way it touched the target (choosing the best checkpoint, early stopping) is avoided by attacking the target's
  ``last.ckpt``, which is also what the shadows are: models after their last epoch.
- trainer: ``max_epochs``, ``max_steps``, ``precision``, ``limit_train_batches``, ``deterministic`` copied;
  ``accumulate_grad_batches``/``gradient_clip_val`` cannot be copied (ShadowEnsemble optimises manually, one step
  per batch) and are named in a warning, as are early stopping and multi-device training (the target's
  effective batch was ``batch_size`` x devices). ``seed_everything`` copied; ``ShadowLogitsWriter`` added.
- run: the shadows go next to the target, ``<root>/<study>/<target name>-shadows``.

Checking a shadows run against its target lives in ``tools.shadow_check``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from tools.files import write_text_atomic
from tools.trained_ids import run_folder_of

# datamodules.pool.QueryAugment, repeated so that `synthpriv shadows-config` starts without torch (a test keeps
# the two equal).
QueryAugment = Literal["none", "mirror", "mirror_shifts"]

CONFIG = "config.yaml"
RECIPE_KEYS = (
    "backbone",
    "bn_momentum",
    "label_smoothing",
    "mixup_alpha",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "scheduler",
    "milestones",
    "gamma",
)
LINKED_KEYS = ("num_classes", "class_names", "image_size", "feature_dim")  # filled in from the data module
DISTILL_KEYS = ("distill_temperature", "distill_weight")  # used only with teacher_checkpoint
PROBE_RECIPE_KEYS = ("lr", "weight_decay")  # LinearProbe options with a ShadowEnsemble counterpart
TRAINER_COPIED = ("max_epochs", "max_steps", "precision", "limit_train_batches", "deterministic")
TRAINER_DEFAULTS = {"max_steps": -1, "precision": None, "limit_train_batches": None, "deterministic": None}
DATA_IGNORED = frozenset(
    {
        "batch_size",  # compared as recipe against the shadows' per-model batch size
        "eval_batch_size",
        "num_workers",
        "predict_split",
        "check_images",
        "cache_dir",
        "class_names",  # compared as the resolved class names
        "sigma",  # feature data: test-time noise
        "noise_seed",
        "equal_noise",
    }
)
DATA_EXAMPLE_KEYS = frozenset(
    {"train_roots", "train_fractions", "val_root", "val_fraction", "test_root", "split_seed", "on_corrupt", "root"}
)
DATA_ANONYMISER_KEYS = frozenset({"anonymiser", "k", "cvae_checkpoint", "cvae_seed", "variance", "online_factor"})
PATH_KEYS = frozenset({"train_roots", "val_root", "test_root", "root", "cvae_checkpoint"})


# --------------------------------------------------------------------------- reading runs


def _short(class_path: Any) -> str:
    return str(class_path or "").rsplit(".", 1)[-1]


def _read_config(run_dir: Path, what: str) -> dict[str, Any]:
    """The saved fit config of a run folder, with one-line errors naming the file."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {run_dir}: {path} does not exist; give the run folder of a finished `synthpriv fit` "
            "(it holds the config.yaml of that fit)"
        )
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {run_dir}: {path} is not valid YAML ({err})".replace("\n", " ")) from err
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "data" not in config:
        raise ValueError(f"{what} {run_dir}: {path} has no 'model' and 'data' sections; expected a saved fit config")
    return config


def _init_args(section: Any) -> dict[str, Any]:
    return dict((section or {}).get("init_args") or {}) if isinstance(section, dict) else {}


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


# --------------------------------------------------------------------------- deriving


def _has_val_split(data_args: dict[str, Any]) -> bool:
    """Whether an ImageFolderDataModule config gives a validation split (a folder, or a share of train)."""
    if data_args.get("val_root") is not None:
        return True
    return bool(data_args.get("train_roots")) and float(data_args.get("val_fraction", 0.1) or 0.0) > 0


def _derive(
    target_run: Path,
    num_models: int,
    pool_splits: list[str] | None,
    population_size: int,
    queries: QueryAugment,
    group_size: int,
) -> tuple[dict[str, Any], list[str], str]:
    """The shadows config, the warnings, and a sentence saying which holdout the pool uses."""
    import datamodules

    target_run = run_folder_of(Path(target_run))
    what = "target run"
    if num_models < 2 or num_models % 2:
        raise ValueError(
            f"--num_models must be even and at least 2 (each example IN for exactly half); got {num_models}"
        )
    if group_size < 1 or population_size < 0:
        raise ValueError(
            f"--group_size must be at least 1 and --population_size 0 or more; got {group_size}, {population_size}"
        )
    if queries not in get_args(QueryAugment):
        raise ValueError(f"--queries must be one of {list(get_args(QueryAugment))}; got {queries!r}")
    config = _read_config(target_run, what)
    config_file = target_run / CONFIG
    model_class = _short(config["model"].get("class_path"))
    if model_class == "LinearProbe":
        raise ValueError(
            f"{what} {target_run}: model LinearProbe is not supported: a probe trains with ReduceLROnPlateau and "
            "early stopping on val/loss, which ShadowEnsemble (fixed epochs; cosine, multistep or no schedule) "
            "cannot copy, and feature shadows choose whether to model the anonymiser; write the shadows config "
            "by hand as configs/cvae/shadows.yaml does (backbone: linear)"
        )
    if model_class != "ImageClassifier":
        raise ValueError(
            f"{what} {target_run}: {config_file} names model {model_class or '(none)'!r}; shadows can be derived "
            "for ImageClassifier targets only"
        )
    model_args = _init_args(config["model"])
    refused = []
    if model_args.get("weights") is not None:
        refused.append(
            f"model.init_args.weights is {model_args['weights']!r} (the target starts from pretrained weights, "
            "but ShadowEnsemble builds every shadow from random initialisation and has no weights option)"
        )
    if model_args.get("teacher_checkpoint") is not None:
        refused.append(
            f"model.init_args.teacher_checkpoint is {model_args['teacher_checkpoint']!r} (the target is distilled "
            "from a teacher's soft labels; ShadowEnsemble trains on hard labels only)"
        )
    if refused:
        raise ValueError(
            f"{what} {target_run}: shadows cannot be trained like this target: {'; '.join(refused)}; "
            "LiRA/RMIA need shadows with the target's training procedure"
        )
    warned = []
    extra = sorted(set(model_args) - set(RECIPE_KEYS) - set(LINKED_KEYS) - set(DISTILL_KEYS) - {"weights"})
    extra = [k for k in extra if k != "teacher_checkpoint"]
    for key in extra:
        warned.append(
            f"{config_file}: model.init_args.{key} = {_show(model_args[key])} has no ShadowEnsemble counterpart; "
            "the shadows train without it"
        )

    data = config["data"]
    data_class = _short(data.get("class_path") if isinstance(data, dict) else None)
    source_class = getattr(datamodules, data_class, None)
    if source_class is None or not hasattr(source_class, "membership_pool"):
        raise ValueError(
            f"{what} {target_run}: {config_file} data class {data_class or '(none)'!r} cannot provide a membership "
            "pool (no membership_pool method); expected ImageFolderDataModule"
        )
    data_args = _init_args(data)
    has_val = _has_val_split(data_args)
    has_test = data_args.get("test_root") is not None
    if pool_splits is None:
        if has_val:
            pool_splits = ["train", "val"]
        elif has_test:
            pool_splits = ["train", "test"]
        else:
            raise ValueError(
                f"{what} {target_run}: {config_file} gives no validation split (val_root unset, val_fraction 0) "
                "and no test_root, so there are no non-members for the pool; pass --pool_splits or retrain the "
                "target with held-out data"
            )
    pool_splits = list(pool_splits)
    unknown = [s for s in pool_splits if s not in ("train", "val", "test")]
    if unknown or "train" not in pool_splits or len(set(pool_splits)) != len(pool_splits):
        raise ValueError(
            f"--pool_splits must name distinct splits among train, val, test and include train (the target's "
            f"members); got {pool_splits}"
        )
    if "val" in pool_splits and not has_val:
        raise ValueError(
            f"--pool_splits includes val but the target {target_run} has no validation split "
            "(val_root unset, val_fraction 0); use [train, test]"
        )
    if "test" in pool_splits and not has_test:
        raise ValueError(f"--pool_splits includes test but the target {target_run} has no test_root; use [train, val]")
    holdout = " + ".join(s for s in pool_splits if s != "train")
    holdout_note = (
        f"Pool: the target's train split (its members) + its {holdout} split (non-members)"
        + (
            "; val is the target's own held-out data, the closest non-members (it only chose the best "
            "checkpoint, which the attack avoids by querying last.ckpt)"
            if "val" in pool_splits
            else ""
        )
        + "."
    )

    trainer = dict(config.get("trainer") or {})
    new_trainer: dict[str, Any] = {}
    for key in TRAINER_COPIED:
        if key not in trainer:
            continue
        if key == "max_epochs" or trainer[key] != TRAINER_DEFAULTS.get(key):
            new_trainer[key] = trainer[key]
    if trainer.get("accumulate_grad_batches") not in (None, 1):
        warned.append(
            f"{config_file}: trainer.accumulate_grad_batches = {trainer['accumulate_grad_batches']} is not copied: "
            "ShadowEnsemble steps once per batch (manual optimisation); raise data.batch_size to match"
        )
    if trainer.get("gradient_clip_val") is not None:
        warned.append(
            f"{config_file}: trainer.gradient_clip_val = {trainer['gradient_clip_val']} is not copied: "
            "ShadowEnsemble optimises manually and does not clip gradients"
        )
    world = _world_size(trainer)
    if world > 1:
        warned.append(
            f"{config_file}: the target trained on {world} devices, an effective batch of "
            f"{data_args.get('batch_size')} x {world}; the shadows' data.batch_size is per model and per step"
        )
    callbacks = trainer.get("callbacks") or []
    if any("EarlyStopping" in _short(c.get("class_path")) for c in callbacks if isinstance(c, dict)):
        trained = _trained_epochs(target_run)
        warned.append(
            f"{config_file}: the target used EarlyStopping"
            + (f" and trained {trained} epochs" if trained is not None else "")
            + f"; the shadows train a fixed trainer.max_epochs = {trainer.get('max_epochs')}"
        )
    new_trainer["callbacks"] = [{"class_path": "ShadowLogitsWriter"}]

    recipe = {key: copy.deepcopy(model_args[key]) for key in RECIPE_KEYS if key in model_args}
    shadows = {
        "seed_everything": config.get("seed_everything", 0),
        "model": {"class_path": "ShadowEnsemble", "init_args": {**recipe, "group_size": group_size}},
        "data": {
            "class_path": "MembershipDataModule",
            "init_args": {
                "num_models": num_models,
                "construction": "balanced",
                "pool_splits": pool_splits,
                "target_split": "train",
                "mask_seed": 0,
                "population_size": population_size,
                "batch_size": data_args.get("batch_size", 64),
                "queries": queries,
                "source": copy.deepcopy(data),
            },
        },
        "trainer": new_trainer,
        "run": {
            "root": str(target_run.parent.parent),
            "study": target_run.parent.name,
            "name": f"{target_run.name}-shadows",
        },
    }
    return shadows, warned, holdout_note


def _world_size(trainer: dict[str, Any]) -> int:
    devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) or (isinstance(devices, str) and devices.isdigit()):
        count = int(devices)
    else:
        count = 1  # "auto" / -1: unknown here
    return max(count, 1) * max(int(nodes), 1)


def _trained_epochs(run_dir: Path) -> int | None:
    summary = run_dir / "fit_summary.json"
    if not summary.is_file():
        return None
    try:
        return json.loads(summary.read_text()).get("epochs")
    except (json.JSONDecodeError, AttributeError):
        return None


def derive_shadows_config(
    target_run: Path,
    num_models: int = 16,
    pool_splits: list[str] | None = None,
    population_size: int = 0,
    queries: QueryAugment = "mirror",
    group_size: int = 1,
) -> dict[str, Any]:
    """The full shadows config (model, data, trainer, seed, run) for the ImageClassifier target in ``target_run``.

    Rules in the module docstring: recipe copied from ``model.init_args``, ``data.init_args.source`` = the target's
    ``data`` verbatim, pool ``[train, val]`` (else ``[train, test]``), training trainer keys and seed copied.
    Options that cannot be copied but only weaken the attack are reported with ``warnings.warn`` (UserWarning).

    Raises:
        FileNotFoundError: ``target_run/config.yaml`` is missing.
        ValueError: a LinearProbe or other non-ImageClassifier target, pretrained ``weights``, a
            ``teacher_checkpoint``, a data module without a membership pool, or pool splits the target lacks.
    """
    config, warned, _ = _derive(Path(target_run), num_models, pool_splits, population_size, queries, group_size)
    for message in warned:
        warnings.warn(message, UserWarning, stacklevel=2)
    return config


def shadows_config(
    target: str,
    out: str,
    num_models: int = 16,
    pool_splits: list[str] | None = None,
    population_size: int = 0,
    queries: QueryAugment = "mirror",
    group_size: int = 1,
) -> Path:
    """Write the shadows config of a target run, derived from the target's own config.yaml.

    The recipe, the data source (the target's data section verbatim), the batch size, epochs and seed are copied
    from the target; ``synthpriv attack --target_checkpoint`` refuses shadows whose data or class names differ
    from the target's. Only ImageClassifier targets trained from scratch without distillation are supported.
    The file is written atomically; an existing file with other content is never replaced (same content: kept).

    Args:
        target: the target's run folder, ``runs/<study>/<name>`` (holds config.yaml of its fit), or a checkpoint
            file in its ``checkpoints/``.
        out: the YAML file to write, e.g. ``configs/mine/shadows.yaml``.
        num_models: K, the number of shadow models (even, >= 2; 16 or more recommended, 64+ for per-example variance).
        pool_splits: source splits forming the pool; default [train, val] when the target has a validation
            split (its own held-out data: the closest non-members), else [train, test].
        population_size: this many of the target's non-members form RMIA's population (never evaluated); 0: none.
        queries: query views per example: 'none', 'mirror' (reference LiRA) or 'mirror_shifts'.
        group_size: shadows run together through vmap (CPU: 1-4; GPU: as many as fit, e.g. 16).
    """
    target_run, out_path = run_folder_of(Path(target)), Path(out)
    if out_path.is_dir():
        raise ValueError(f"out {out_path} is a folder; give the YAML file to write, e.g. {out_path / 'shadows.yaml'}")
    config, warned, holdout_note = _derive(target_run, num_models, pool_splits, population_size, queries, group_size)
    for message in warned:
        warnings.warn(message, UserWarning, stacklevel=2)
    text = _header(target_run, out_path, config, warned, holdout_note) + yaml.safe_dump(config, sort_keys=False)
    if out_path.exists():
        if out_path.read_text() == text:
            return out_path
        raise FileExistsError(
            f"out {out_path} exists with other content; not replacing it: remove it or choose another file "
            f"(expected the shadows config derived from {target_run / CONFIG})"
        )
    return write_text_atomic(out_path, text)


def _header(target_run: Path, out: Path, config: dict[str, Any], warned: list[str], holdout_note: str) -> str:
    source = target_run / CONFIG
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    run = config["run"]
    shadows_dir = Path(run["root"]) / run["study"] / run["name"]
    attack_dir = Path(run["root"]) / run["study"] / f"attack-{target_run.name}"
    k = config["data"]["init_args"]["num_models"]
    lines = [
        f"Shadows for the target run {target_run}, written by `synthpriv shadows-config {target_run} {out}`",
        f"from {source} (sha256 {digest}...). Recipe (model.init_args), data source (data.init_args.source: the",
        "target's data section verbatim), batch size, epochs and seed copy the target: keep them so.",
        "`synthpriv attack --target_checkpoint` refuses shadows whose data or class names differ from the target's",
        "and warns on recipe differences.",
        f"{holdout_note} K = {k}: each example is IN for {k // 2} shadows.",
        "Next (hardware: add --trainer.accelerator/--trainer.devices; on a GPU raise model.init_args.group_size):",
        f"  synthpriv fit --config {out}",
        f"  synthpriv predict --config {out} --ckpt_path last",
        f"  synthpriv attack {shadows_dir / 'shadows.npz'} {attack_dir} "
        f"--target_checkpoint {target_run / 'checkpoints' / 'last.ckpt'}",
        "(last.ckpt: the target after its last epoch, like the shadows; its best checkpoint was chosen on val).",
    ]
    lines += [f"Warning: {w}" for w in warned]
    return "".join(f"# {line}\n" for line in lines)
