"""Check, before any work, that a W&B run can start: a known ``WANDB_MODE`` and, online, an API key.

synthpriv logs to W&B offline unless ``WANDB_MODE`` says otherwise. An online run without credentials would
otherwise fail (or prompt for a key) only when the logger starts, after the work is done. The check looks for
credentials where wandb 0.31 looks for them without a network call (``wandb/sdk/lib/wbauth``):
``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or a ``.netrc`` entry with a password for the W&B host
(``WANDB_BASE_URL``, default ``https://api.wandb.ai``; file ``$NETRC``, else ``~/.netrc``, else ``~/_netrc``).
It does not validate the key against the server.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

ONLINE_MODES = ("online", "run", "shared")  # "run" is wandb's older spelling of online
OFFLINE_MODES = ("offline", "dryrun", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"


def wandb_mode(default: str = "offline") -> str:
    """``WANDB_MODE`` (``default`` when unset or empty), checked against wandb's modes."""
    mode = os.environ.get("WANDB_MODE") or default
    if mode not in ONLINE_MODES + OFFLINE_MODES:
        raise ValueError(f"WANDB_MODE must be one of {', '.join(ONLINE_MODES + OFFLINE_MODES)}; found {mode!r}")
    return mode


def _netrc_path() -> Path:
    if env := os.environ.get("NETRC"):
        return Path(env).expanduser()
    unix = Path("~/.netrc").expanduser()
    windows = Path("~/_netrc").expanduser()
    return windows if not unix.exists() and windows.exists() else unix


def _netrc_has_key(host: str) -> bool:
    netloc = urlsplit(host).netloc
    try:
        entry = netrc.netrc(str(_netrc_path())).authenticators(netloc) if netloc else None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


def has_wandb_credentials() -> bool:
    """Whether wandb would find credentials for the configured host without asking."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    return _netrc_has_key(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST)


def require_wandb_credentials(what: str, default_mode: str = "offline") -> None:
    """Raise a one-line ``ValueError`` when the W&B run of ``what`` would go online without an API key.

    Args:
        what: the step that will log (e.g. 'privacy-report'); it starts the message.
        default_mode: the mode when ``WANDB_MODE`` is unset (synthpriv's default: offline).

    Raises:
        ValueError: ``WANDB_MODE`` is not a wandb mode, or it is online and no credentials are found.
    """
    mode = wandb_mode(default_mode)
    if mode in ONLINE_MODES and not has_wandb_credentials():
        host = os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST
        raise ValueError(
            f"{what}: WANDB_MODE={mode} but no W&B API key was found (WANDB_API_KEY, or a {_netrc_path()} entry "
            f"for {urlsplit(host).netloc}); run `wandb login`, set WANDB_API_KEY, or unset WANDB_MODE to log offline"
        )
