"""The non-training subcommands of `synthpriv`, parsed by jsonargparse (typed, --help, --config).

Each tool is named by ``module:function`` and imported only when it runs (or shows its --help): jsonargparse
needs the function itself for its signature, and importing every tool up front costs seconds of start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

TOOLS: dict[str, str] = {
    "data": "tools.bundled_data:materialise_dataset",
    "run": "tools.study:run_study",
    "attack": "tools.attack:run_attack",
    "privacy-report": "tools.privacy_report:privacy_report",
    "feature-report": "tools.feature_report:feature_report",
    "shadows-config": "tools.shadow_config:shadows_config",
    "image-audit": "tools.image_audit:image_audit",
    "metric-agreement": "tools.metric_agreement:metric_agreement",
    "judge-labels": "tools.judge_labels:judge_labels",
    "segment": "tools.segment:segment",
    "spinml-demo-data": "tools.spinml_demo_data:build_spinml_demo",
    "spinml-leakage": "tools.spinml_leakage:spinml_leakage",
    "spinml-report": "tools.spinml_report:spinml_report",
}


def tool_function(name: str) -> Callable[..., Any]:
    """Import and return the function behind tool ``name``."""
    module, function = TOOLS[name].split(":")
    return getattr(importlib.import_module(module), function)


def run_tool(argv: list[str], exit_on_error: bool = True) -> None:
    """Dispatch ``argv`` (starting with the tool name) to its function.

    With ``exit_on_error=False`` a bad option raises ``argparse.ArgumentError`` instead of printing the usage
    and exiting, so the console entry point can report it in one line.
    """
    from jsonargparse import auto_cli

    name = argv[0]
    auto_cli({name: tool_function(name)}, args=argv, as_positional=True, exit_on_error=exit_on_error)
