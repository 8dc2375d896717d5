"""Debian's headless Chromium driven through its chromedriver, for the dashboard tests.

The browser and its driver come from Debian's packages (``scripts/ensure-browser.sh``, which
``make test`` runs); Selenium is given both paths, so its manager never downloads anything.
A missing browser fails the test that needs it: such a test is never skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = Path(os.environ.get("BROKER_NET_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("BROKER_NET_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Headless, as root in a container, and quiet: no update checks, reports or any other
# request to a host other than the page's.
_ARGUMENTS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-domain-reliability", "--no-pings",
    "--disable-client-side-phishing-detection", "--hide-scrollbars",
)  # fmt: skip


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium window of ``width`` x ``height``, closed afterwards.

    Raises:
        RuntimeError: the browser or its driver is not installed.
    """
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise RuntimeError(
                f"{path} is missing: install Debian's chromium and chromium-driver "
                "(bash scripts/ensure-browser.sh; make test does it)"
            )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (*_ARGUMENTS, f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
