"""Instructions per round trip, counted by valgrind's callgrind: a figure the machine's load
cannot move.

Runs :mod:`bench.profile_roundtrip` under ``valgrind --tool=callgrind`` twice, with ``--low``
and ``--high`` timed pings after the same warm-up, and divides the difference of the two
totals by the difference of the pings, so start-up and warm-up cancel out. Needs valgrind
(``apt install valgrind``); slow (a minute or two per run).

    python -m bench.count_instructions --low 100 --high 300
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions(count: int, warmup: int, nodes: int = 1) -> int:
    """Instructions of one run of ``count`` timed requests to ``nodes`` after ``warmup``."""
    profile = ["-m", "bench.profile_roundtrip", "--count", str(count), "--warmup", str(warmup)]
    with tempfile.TemporaryDirectory(prefix="callgrind-") as folder:
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/out",
            sys.executable, *profile, "--nodes", str(nodes),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the profiled run failed:\n{done.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    """Print the instructions per round trip (both sides, in process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.count_instructions")
    parser.add_argument("--low", type=int, default=100)
    parser.add_argument("--high", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=1, help="ping this many nodes at once")
    args = parser.parse_args(argv)
    low = instructions(args.low, args.warmup, args.nodes)
    high = instructions(args.high, args.warmup, args.nodes)
    per_trip = (high - low) / (args.high - args.low)
    print(f"instructions per request to {args.nodes} nodes: {per_trip / 1000:.0f} k "
          "(both sides, in process)")  # fmt: skip


if __name__ == "__main__":
    main()
