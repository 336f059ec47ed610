"""One-line messages for command-line errors: the option or path, what was expected and what was found.

jsonargparse wraps the real problem (a typo'd key, a data module's own check) in layers of "Parser key",
"Problem with given class_path" and "Does not validate against any of the Union subtypes" text followed by
the whole config. ``one_line`` digs out the real message, names the option and returns a single line; the
full chain stays available to ``SYNTHPRIV_DEBUG=1`` (the exception is re-raised with its causes).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from argparse import ArgumentError
from collections.abc import Iterable

UNION = "Does not validate against any of the Union subtypes"
_WRAPPERS = (UNION, 'Parser key "', "Problem with given class_path")
_NESTED_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_TOP_UNKNOWN = re.compile(r"does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (--?[\w.\-]+)")
_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"class_path '([\w.]+)'")


class CommandLineError(ValueError):
    """A bad command line or config, already described in one line."""


def one_line(err: BaseException, options: Iterable[str] = ()) -> str:
    """The one-line description of ``err``; ``options`` are the accepted option names, for a suggestion.

    A parse error (``ArgumentError``) about a key the parser does not accept becomes "unknown option 'KEY'
    (did you mean ...?)"; otherwise the innermost real message, prefixed with the option path when it does
    not name it, joined into one line.
    """
    chain = _chain(err)
    texts = [str(e) for e in chain]
    unknown = _unknown_option(texts, list(options)) if isinstance(err, ArgumentError) else None
    if unknown:
        return unknown
    message = str(_innermost(chain))
    if message.startswith(UNION):
        message = _first_union_error(message)
    keys = _keys(texts)
    if keys and not message.startswith(keys[0]) and keys[-1] not in message:
        message = f"{'.'.join(keys)}: {message}"
    return flatten(message)


def flatten(message: str) -> str:
    """Join a multi-line message into one line (lines separated by '; ')."""
    lines = [line.strip() for line in message.splitlines()]
    return "; ".join(line for line in lines if line) or message.strip()


def suggestion(name: str, candidates: Iterable[str]) -> str | None:
    """The closest accepted name to a mistyped ``name`` (compared on its last dotted part too), or None."""
    candidates = sorted(set(candidates))
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close and "." in name:
        prefix, _, last = name.rpartition(".")
        same_group = [c.rpartition(".")[2] for c in candidates if c.rpartition(".")[0] == prefix]
        close = [f"{prefix}.{m}" for m in difflib.get_close_matches(last, same_group, n=1, cutoff=0.6)]
    return close[0] if close else None


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its explicit causes (``raise ... from``), outermost first."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__  # type: ignore[assignment]
    return chain


def _innermost(chain: list[BaseException]) -> BaseException:
    """The first exception in the chain that is not one of jsonargparse's wrappers (else the last one)."""
    for e in chain:
        text = str(e)
        if not (isinstance(e, ArgumentError) or text.startswith(_WRAPPERS)) or e.__cause__ is None:
            return e
    return chain[-1]


def _first_union_error(message: str) -> str:
    """The first subtype's error out of a "Does not validate against any of the Union subtypes" text."""
    match = re.search(r"\nErrors:\n\s*- (.*?)(?:\n\s*- |\nGiven value)", message, re.S)
    return match.group(1) if match else message.splitlines()[0]


def _keys(texts: list[str]) -> list[str]:
    """The option path named by nested "Parser key" wrappers, e.g. ['data', 'init_args', 'batch_size'].

    The outermost message holds the nested ones, so it alone is read; a class_path between two keys means
    the inner key is one of that class's init_args.
    """
    text = next((t for t in texts if _KEY.search(t)), "")
    keys: list[str] = []
    for match in re.finditer(f"{_KEY.pattern}|{_CLASS_PATH.pattern}", text):
        if match.group(1):
            keys.append(match.group(1))
        elif keys and keys[-1] != "init_args":
            keys.append("init_args")
    return keys if not keys or keys[-1] != "init_args" else keys[:-1]


def _unknown_option(texts: list[str], options: list[str]) -> str | None:
    """ "unknown option 'KEY' (did you mean ...?)" when the error is a key that the parser does not accept."""
    joined = "\n".join(texts)
    nested = _NESTED_UNKNOWN.search(joined)
    if nested:
        option = nested.group(1)
        keys = _keys(texts)
        class_path = _CLASS_PATH.search(joined)
        prefix = f"{keys[0]}.init_args." if keys and class_path else (f"{keys[0]}." if keys else "")
        candidates = _init_parameters(class_path.group(1)) if class_path else []
        close = suggestion(option, candidates)
        where = f" of {class_path.group(1).rpartition('.')[2]}" if class_path else ""
        hint = f" (did you mean {prefix}{close}?)" if close else ""
        return f"unknown option '{prefix}{option}'{where}{hint}"
    top = _TOP_UNKNOWN.search(joined)
    if top:
        close = suggestion(top.group(1), options)
        return f"unknown option '{top.group(1)}'" + (f" (did you mean {close}?)" if close else "")
    flag = _UNRECOGNIZED.search(joined)
    if flag:
        name = flag.group(1).lstrip("-")
        if name in options:  # a positional parameter given as --name (e.g. attack's out)
            given = flag.group(1)
            return f"'{given}' is a positional argument here: give its value without '{given}' (see --help)"
        close = suggestion(name, options)
        return f"unknown option '{flag.group(1)}'" + (f" (did you mean --{close}?)" if close else "")
    return None


def _init_parameters(class_path: str) -> list[str]:
    """The keyword parameters of a class (the keys its init_args accept); [] when it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
