"""Take docs/images/dashboard.png: the dashboard while the real demo runs.

Runs ``python -m simulation.demo --dashboard`` (RabbitMQ on 127.0.0.1, three node agent
processes, more rounds than ``make demo`` so there is time to look), opens the URL it prints
in Debian's headless Chromium (``bash scripts/ensure-browser.sh`` installs it), waits until
some rounds are done, a round is running, the live progress charts have points and every node
is up, saves a screenshot of the whole page, then stops the demo (Ctrl-C, as a person would).

    .venv/bin/python scripts/dashboard-screenshot.py [--out docs/images/dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("BROKER_NET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BROKER_NET_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
    "--hide-scrollbars",
)  # fmt: skip
WIDTH = 1400
T = TypeVar("T")
DEADLINE = 180.0
"""Seconds any one step may take."""


class Demo:
    """The demo in a process of its own, its output collected by a thread."""

    def __init__(self, namespace: str, rounds: int) -> None:
        command = [sys.executable, "-m", "simulation.demo", "--dashboard",
                   "--namespace", namespace, "--rounds", str(rounds)]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def url(self) -> str:
        """The dashboard's URL, once the demo prints it."""

        def printed() -> str | None:
            if self.process.poll() is not None:
                raise SystemExit("the demo ended:\n" + "\n".join(self.lines[-20:]))
            found = [line for line in self.lines if line.startswith("dashboard: http")]
            return found[0].removeprefix("dashboard: ") if found else None

        return wait("the demo prints the dashboard's URL", printed)

    def stop(self) -> None:
        """Ctrl-C, then wait for it to end (killed if it does not)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait(what: str, found: Callable[[], T | None]) -> T:
    """Poll ``found`` until it gives something; give up after :data:`DEADLINE` seconds."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        value = found()
        if value:
            return value
        time.sleep(0.3)
    raise SystemExit(f"gave up waiting: {what}")


def number(driver: WebDriver, selector: str, name: str) -> int:
    """An integer attribute of the first element matching ``selector`` (-1: none)."""
    value = driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e ? e.getAttribute(arguments[1]) : null;",
        selector, name,
    )  # fmt: skip
    return int(value) if value not in (None, "") else -1


def ready(driver: WebDriver, rounds: int) -> bool:
    """Rounds done, one running, live charts drawn, every node up."""
    return bool(driver.execute_script(
        "const c = document.querySelector('.round-counter[data-task=train]');"
        "const live = [...document.querySelectorAll('svg.chart[data-chart^=\"live \"]')];"
        "const nodes = [...document.querySelectorAll('tr.node')];"
        "return c !== null && Number(c.dataset.round) >= arguments[0]"
        " && document.body.textContent.includes('running:')"
        " && live.length > 0 && live.every(s => Number(s.dataset.points) > 0)"
        " && nodes.length === 3 && nodes.every(n => n.dataset.state === 'up');",
        rounds,
    ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    parser.add_argument("--namespace", default="demo")
    parser.add_argument("--rounds", type=int, default=30, help="the demo's FedAvg rounds")
    parser.add_argument("--at-round", type=int, default=6, help="rounds done when taken")
    args = parser.parse_args()

    options = Options()
    options.binary_location = CHROMIUM
    for argument in (*ARGUMENTS, f"--window-size={WIDTH},1000"):
        options.add_argument(argument)
    demo = Demo(args.namespace, args.rounds)
    try:
        url = demo.url()
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url)
            wait("the demo's training shows", lambda: ready(driver, args.at_round))
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(WIDTH, int(height) + 140)
            wait("the page is laid out again", lambda: ready(driver, args.at_round))
            driver.save_screenshot(str(args.out))
            shown = number(driver, ".round-counter[data-task=train]", "data-round")
            print(f"{args.out}: the dashboard at round {shown} of {args.rounds}")
        finally:
            driver.quit()
    finally:
        demo.stop()


if __name__ == "__main__":
    main()
