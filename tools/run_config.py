"""Point a parsed LightningCLI config at its run folder: trainer root, loggers, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tools.run_dirs import (
    CHECKPOINT_DIR,
    RunOptions,
    is_primary_process,
    prepare_fit,
    resolve_checkpoint,
    run_directory,
)

WANDB_ID_FILE = "wandb_run_id.txt"
CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"


def configure_run(cfg: Namespace, subcommand: str) -> Path:
    """Resolve the run folder of one subcommand's config in place and return it.

    For `fit` this applies the no-clobber rule (tools/run_dirs.prepare_fit: a failed start is moved aside to
    ``failed-start-N/``; a resume of a finished run with nothing left to train is announced and changes nothing;
    one that early stopping ended is refused) before anything is written.
    """
    _check_wandb_credentials(cfg.trainer.get("logger"), subcommand)
    model_class = str(cfg.model.class_path) if cfg.get("model") and cfg.model.get("class_path") else "model"
    options = RunOptions(**cfg.run.as_dict()) if isinstance(cfg.run, Namespace) else cfg.run
    run_dir = run_directory(options, model_class.rsplit(".", 1)[-1].lower())
    cfg.run.name = run_dir.name  # the saved config names the run explicitly
    if subcommand == "fit":
        trainer = cfg.trainer
        limits = {key: trainer.get(key) for key in ("max_epochs", "max_steps", "max_time")}
        cfg.ckpt_path = prepare_fit(run_dir, options.if_exists, cfg.get("ckpt_path"), **limits)
    else:
        cfg.ckpt_path = resolve_checkpoint(run_dir, cfg.get("ckpt_path"))
    if is_primary_process():
        run_dir.mkdir(parents=True, exist_ok=True)
    cfg.trainer.default_root_dir = str(run_dir)
    cfg.trainer.logger = _configure_loggers(cfg.trainer.get("logger"), run_dir, options, subcommand, cfg.ckpt_path)
    return run_dir


def _check_wandb_credentials(logger: Any, subcommand: str) -> None:
    """Before any work: a W&B logger set online (``offline: false``) needs an API key (one-line error)."""
    from tools.wandb_check import require_wandb_credentials

    for item in logger if isinstance(logger, list) else [logger]:
        if isinstance(item, Namespace) and str(item.get("class_path", "")).endswith("WandbLogger"):
            if (item.get("init_args") or Namespace()).get("offline") is False:
                require_wandb_credentials(f"synthpriv {subcommand} (trainer.logger WandbLogger)", default_mode="online")


def _configure_loggers(logger: Any, run_dir: Path, options: RunOptions, subcommand: str, ckpt_path: str | None) -> Any:
    if logger is False:
        return False
    if logger is None or logger is True:
        return Namespace(class_path=CSV_LOGGER, init_args=Namespace(save_dir=str(run_dir), name="logs"))
    loggers = logger if isinstance(logger, list) else [logger]
    for item in loggers:
        if not isinstance(item, Namespace) or "init_args" not in item:
            continue
        args = item.init_args
        if "save_dir" in args and args.save_dir in (None, ".", ""):
            # absolute: W&B's service process may have started in another working directory, and it resolves a
            # relative dir against its own (seen in the tests: files landed in the repository's runs/)
            args.save_dir = str(Path(run_dir).resolve())
        if str(item.class_path).endswith("WandbLogger"):
            _configure_wandb(item, run_dir, options, subcommand, ckpt_path)
    return logger


def _configure_wandb(
    item: Namespace, run_dir: Path, options: RunOptions, subcommand: str, ckpt_path: str | None
) -> None:
    """One W&B run per CLI call, grouped by run; a resumed fit continues its own W&B run."""
    args = item.init_args
    if args.get("name") is None:
        args.name = f"{options.study}/{run_dir.name}/{subcommand}"
    extra = dict(item.get("dict_kwargs") or {})
    extra.setdefault("group", f"{options.study}/{run_dir.name}")
    extra.setdefault("job_type", subcommand)
    id_file = run_dir / WANDB_ID_FILE
    if subcommand == "fit" and ckpt_path is not None and args.get("id") is None and id_file.is_file():
        args.id = id_file.read_text().strip()
        extra.setdefault("resume", "allow")
    item.dict_kwargs = extra


def ensure_checkpointing(callbacks: list[Callback] | None, run_dir: Path, enabled: bool) -> list[Callback]:
    """Checkpoints of a run live in ``<run>/checkpoints``; ``last.ckpt`` is always the latest epoch.

    Lightning 2.6 refreshes a monitoring ModelCheckpoint's ``last.ckpt`` only when a new best is saved, which
    makes it stale for resuming; so configured checkpoints get ``save_last=False`` and a dedicated
    monitor-less checkpoint named ``last`` is rewritten after every epoch.
    """
    callbacks = list(callbacks or [])
    if not enabled:
        return callbacks
    ckpt_dir = str(run_dir / CHECKPOINT_DIR)
    for checkpoint in callbacks:
        if isinstance(checkpoint, ModelCheckpoint):
            if checkpoint.dirpath is None:
                checkpoint.dirpath = ckpt_dir
            checkpoint.save_last = False
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    return [*callbacks, latest]


def remember_wandb_run(trainer_loggers: list[Any], run_dir: Path) -> None:
    """Store the W&B run id of a fit so that resuming continues the same W&B run."""
    from lightning.pytorch.loggers import WandbLogger

    from tools.files import write_text_atomic

    for logger in trainer_loggers:
        if isinstance(logger, WandbLogger) and not (run_dir / WANDB_ID_FILE).exists():
            write_text_atomic(run_dir / WANDB_ID_FILE, str(logger.experiment.id))
