"""Run every registered benchmark, print a table and write ``bench/results/latest.json``.

Usage: ``python -m bench.run`` (``make bench``). Register a new benchmark by adding its
``run`` callable to :data:`BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import Row, bench_async, bench_codec, bench_network, bench_plan_runner, bench_security

BENCHMARKS: list[Callable[[], list[Row]]] = [
    bench_codec.run,
    bench_network.run,
    bench_security.run,
    bench_plan_runner.run,
    bench_async.run,
]
"""Every benchmark, in the order they run."""

RESULTS = Path(__file__).parent / "results" / "latest.json"


def _table(rows: list[Row]) -> Table:
    table = Table(title="broker-net benchmarks (ratio = ours / baseline, lower is better)")
    table.add_column("benchmark")
    table.add_column("ours", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("target", justify="right")
    for item in rows:
        target = item["target"]
        met = target is None or item["ratio"] <= target
        style = "green" if met else "bold red"
        table.add_row(
            item["name"],
            f"{item['ours']:.2f} {item['unit']}",
            f"{item['baseline']:.2f} {item['unit']}",
            f"[{style}]{item['ratio']:.2f}x[/{style}]",
            "-" if target is None else f"<= {target:.2f}x",
        )
    return table


def _environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        **{name: version(name) for name in ("numpy", "msgpack", "pydantic")},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 1 when a ratio misses its target."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs: no 1 GB payload, no 250 or 1,000 nodes"
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"  # read by the benchmarks that have a quick mode

    console = Console()
    rows: list[Row] = []
    for benchmark in BENCHMARKS:
        console.print(f"running {benchmark.__module__}.{benchmark.__name__} ...")
        rows.extend(benchmark())
    console.print(_table(rows))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "created_at": datetime.now(UTC).isoformat(),
        "environment": _environment(),
        "rows": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written to {args.output}")
    missed = [
        item for item in rows if item["target"] is not None and item["ratio"] > item["target"]
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
