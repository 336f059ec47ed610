"""Start-up time of `synthpriv` commands: lazy imports (``python -m cli``) vs the old eager imports, same run.

Each start is a fresh interpreter (a "cold start" of the process; the OS file cache is warm after the first
round, for both sides alike). For every command the script alternates ours and the baseline ``--repeats``
times and reports the median wall time of each, their ratio (baseline / ours: > 1 means ours starts faster),
and the median CPU time (user + system of the child: less sensitive than wall time to other processes on a
shared machine).

The baseline reproduces the behaviour before lazy imports: it first imports everything the old ``cli.py`` and
``tools/commands.py`` imported at module level (Lightning, the callbacks / datamodules / lightning_modules
packages, the run-folder helpers and all five tool modules), then does what the old entry point did: the
overview for ``--help``, jsonargparse's ``auto_cli`` over all five tools for a tool, LightningCLI otherwise.

Goal (issue 11 item 9): ``--help`` and the non-training tools (``<tool> --help``) under 2 s.

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--commands help attack run fit]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each is timed as `synthpriv <command> --help` ("help": `synthpriv --help`): start-up, then the parser's help.
COMMANDS = ["help", "attack", "run", "privacy-report", "feature-report", "data", "fit"]
GOAL_S = 2.0

# The old entry point: cli.py and tools/commands.py as they were before lazy imports (module-level imports
# first, then the same dispatch).
BASELINE = """
import sys
import lightning
from lightning.pytorch.cli import LightningCLI
import callbacks, datamodules, lightning_modules
import callbacks.run_dir, tools.resume_changes, tools.run_config, tools.run_dirs
from jsonargparse import auto_cli
import tools.attack, tools.bundled_data, tools.feature_report, tools.privacy_report, tools.study
import cli
from tools.commands import TOOLS, tool_function

argv = sys.argv[1:]
if argv and argv[0] in TOOLS:
    auto_cli({name: tool_function(name) for name in TOOLS}, args=argv, as_positional=True)
else:
    sys.argv = ["synthpriv", *argv]
    cli.main()
"""


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one child process running ``argv`` from the repository root."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="starts per command and side (median reported)")
    parser.add_argument("--commands", nargs="+", default=COMMANDS, help="commands to time (help: synthpriv --help)")
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"{'command':24s} {'baseline s':>10s} {'ours s':>8s} {'ratio':>6s} {'base CPU':>8s} {'ours CPU':>8s}  goal")
    for command in args.commands:
        words = ["--help"] if command == "help" else [command, "--help"]
        ours: list[tuple[float, float]] = []
        base: list[tuple[float, float]] = []
        for _ in range(args.repeats):  # alternate, so that a load spike hits both sides
            ours.append(timed([sys.executable, "-m", "cli", *words]))
            base.append(timed([sys.executable, "-c", BASELINE, *words]))
        o_wall, b_wall = (statistics.median(w for w, _ in runs) for runs in (ours, base))
        o_cpu, b_cpu = (statistics.median(c for _, c in runs) for runs in (ours, base))
        training = words[0] in ("fit", "validate", "test", "predict")
        goal = "n/a (training)" if training else ("met" if o_wall < GOAL_S else f"NOT met (>= {GOAL_S:g} s)")
        figures = f"{b_wall:10.2f} {o_wall:8.2f} {b_wall / o_wall:6.1f} {b_cpu:8.2f} {o_cpu:8.2f}"
        print(f"{shlex.join(words):24s} {figures}  {goal}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
