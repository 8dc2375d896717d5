"""The dashboard in a real headless browser (Debian's chromium and chromedriver): the page
loads with its token and refuses any other; a running job shows, its round counter and a
chart advance without a reload, and a node that is killed turns red; an asynchronous task's
version counter and update fates advance as it publishes a version.

Set ``BROKER_NET_DASHBOARD_SCREENSHOT=<file.png>`` to keep a screenshot of the page while the
job runs (docs/images/dashboard.png is one).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from broker_net.amqp import AmqpTransport
from broker_net.crypto.authentication import Security
from broker_net.crypto.introductions import introduce
from broker_net.topology import Topology
from researcher.jobs.buffered_records import UpdateRecord, UpdateStatus, VersionRecord
from researcher.orchestration.fedjob import FedJob
from researcher.orchestration.store.job_store import JobStore
from researcher.requests.router import Requests
from simulation.demo_setup import register_demo_shard
from simulation.federation import operator
from tests.conftest import MANAGEMENT_URL
from tests.researcher.dashboard.test_async_dashboard import running_async_job
from tests.researcher.orchestration.test_scheduler import training_job
from tests.support.browser import headless_chromium
from tests.support.dashboard_process import RunningDashboard, dashboard_process
from tests.support.processes import AgentProcesses

pytestmark = pytest.mark.slow

RESEARCHER = "dash-researcher"
NODES = ["hospital-a", "hospital-b", "hospital-c"]
WAIT = 45.0
"""Seconds any one thing may take to show: a deadline, not an expected duration."""


@dataclass
class Federation:
    """Node agent processes with demo shards, slowed so that rounds can be watched, and the
    folder of a researcher they trust."""

    amqp_url: str
    namespace: str
    nodes_dir: Path
    researcher_dir: Path
    agents: AgentProcesses

    def env(self) -> dict[str, str]:
        """The settings of a ``researcher`` process of this federation."""
        return {
            "BROKER_NET_RESEARCHER_AMQP_URL": self.amqp_url,
            "BROKER_NET_RESEARCHER_NAMESPACE": self.namespace,
            "BROKER_NET_RESEARCHER_RESEARCHER_ID": RESEARCHER,
            "BROKER_NET_RESEARCHER_DATA_DIR": str(self.researcher_dir),
            "BROKER_NET_RESEARCHER_MANAGEMENT_URL": MANAGEMENT_URL,
        }


@pytest.fixture
def federation(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Federation]:
    nodes_dir, researcher_dir = tmp_path / "nodes", tmp_path / "researcher"
    for index, node in enumerate(NODES):
        register_demo_shard(nodes_dir / node, index, len(NODES))
    introduce(RESEARCHER, researcher_dir, {node: nodes_dir / node for node in NODES})
    agents = AgentProcesses(amqp_url, namespace, nodes_dir)
    try:
        agents.start_all(NODES, "--security", "--train-delay", "0.6")
        yield Federation(amqp_url, namespace, nodes_dir, researcher_dir, agents)
    finally:
        agents.stop_all()


class JobThread:
    """A job run by an in-process researcher in a thread of its own (the test's browser
    calls block), cancelled by :meth:`stop`."""

    def __init__(self, federation: Federation, job: FedJob) -> None:
        self.federation = federation
        self.job = job
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="job", daemon=True)

    def __enter__(self) -> JobThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the job thread did not stop"
        if self._error is not None and exc_info[0] is None:
            raise self._error

    def _main(self) -> None:
        try:
            anyio.run(self._run)
        except BaseException as exc:
            self._error = exc

    async def _run(self) -> None:
        fed = self.federation
        security = Security.load(
            fed.researcher_dir / "identity", RESEARCHER, "researcher",
            fed.researcher_dir / "trusted-nodes",
        )  # fmt: skip
        async with (
            AmqpTransport(fed.amqp_url, connection_name="researcher:dashboard-test") as transport,
            Requests(transport, RESEARCHER, topology=Topology(fed.namespace),
                     security=security) as requests,
        ):  # fmt: skip
            await requests.wait_for_nodes(NODES, timeout=30)
            with JobStore(fed.researcher_dir) as store:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._job, requests, store)
                    while not self._stop.is_set():
                        await anyio.sleep(0.1)
                    group.cancel_scope.cancel()

    async def _job(self, requests: Requests, store: JobStore) -> None:
        await self.job.run(
            requests, store=store, approver=operator(self.federation.nodes_dir), discovery=0
        )


def wait_for(driver: WebDriver, what: str, condition, timeout: float = WAIT):  # type: ignore[no-untyped-def]
    """Wait until ``condition(driver)`` is truthy; fail naming ``what``."""
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)


def attribute(driver: WebDriver, selector: str, name: str) -> str | None:
    """The attribute of the first element matching ``selector``, if there is one (read in
    one script: an update may replace the element at any time)."""
    value = driver.execute_script(
        "const found = document.querySelector(arguments[0]);"
        "return found ? found.getAttribute(arguments[1]) : null;",
        selector, name,
    )  # fmt: skip
    return None if value is None else str(value)


def background(driver: WebDriver, selector: str) -> str:
    """The computed background colour of the first element matching ``selector``."""
    return str(driver.execute_script(
        "return getComputedStyle(document.querySelector(arguments[0])).backgroundColor;",
        selector,
    ))  # fmt: skip


def number(driver: WebDriver, selector: str, name: str) -> int:
    value = attribute(driver, selector, name)
    return int(value) if value is not None else -1


def red_dominates(colour: str) -> bool:
    """True for a CSS ``rgb(a)`` colour that is clearly red."""
    values = [float(v) for v in colour[colour.index("(") + 1 : -1].split(",")[:3]]
    red, green, blue = values
    return red > green + 10 and red > blue + 10


@pytest.mark.rabbitmq
def test_a_running_job_its_rounds_a_chart_and_a_killed_node(federation: Federation) -> None:
    job = training_job("watched", rounds=40, min_nodes=3)
    with (
        JobThread(federation, job),
        dashboard_process(federation.env(), "--interval", "0.5") as dashboard,
        headless_chromium() as driver,
    ):
        driver.get(dashboard.url)
        assert driver.title == "broker-net dashboard"
        driver.execute_script("window.loadedOnce = true;")

        wait_for(driver, "the job shows as running", lambda d: attribute(
            d, 'tr.job[data-state="running"]', "data-job"))  # fmt: skip
        counter = '.round-counter[data-task="train"]'
        chart = '.training[data-task="train"] svg.chart'
        wait_for(driver, "a first round is done", lambda d: number(d, counter, "data-round") >= 1)
        first_round = number(driver, counter, "data-round")
        first_points = number(driver, chart, "data-points")
        assert first_points >= 1
        wait_for(driver, "the round counter advances",
                 lambda d: number(d, counter, "data-round") > first_round)  # fmt: skip
        wait_for(
            driver, "the chart grows", lambda d: number(d, chart, "data-points") > first_points
        )
        assert driver.execute_script("return window.loadedOnce === true;"), "the page reloaded"

        for node in NODES:
            wait_for(driver, f"{node} is up", lambda d, node=node: attribute(
                d, f'tr[data-node="{node}"]', "data-state") == "up")  # fmt: skip
        if target := os.environ.get("BROKER_NET_DASHBOARD_SCREENSHOT"):
            wait_for(driver, "more rounds", lambda d: number(d, counter, "data-round") >= 6)
            height = driver.execute_script("return document.documentElement.scrollHeight;")
            driver.set_window_size(1400, int(height) + 140)
            driver.save_screenshot(target)

        federation.agents.kill("hospital-c")
        killed = 'tr[data-node="hospital-c"]'
        wait_for(driver, "the killed node is down",
                 lambda d: attribute(d, killed, "data-state") == "down")  # fmt: skip
        assert red_dominates(background(driver, f"{killed} td"))
        assert "node-down" in (attribute(driver, killed, "class") or "")
        assert attribute(driver, 'tr[data-node="hospital-a"]', "data-state") == "up"
        assert driver.execute_script("return window.loadedOnce === true;"), "the page reloaded"


def refused(dashboard: RunningDashboard, path: str, token: str | None) -> httpx.Response:
    params = {} if token is None else {"token": token}
    return httpx.get(f"{dashboard.base}{path}", params=params, timeout=10)


def test_a_wrong_token_is_refused_and_the_page_works_without_a_broker(tmp_path: Path) -> None:
    env = {
        # Nothing listens on port 1: no broker, no management API, and no job store yet.
        "BROKER_NET_RESEARCHER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "BROKER_NET_RESEARCHER_MANAGEMENT_URL": "http://127.0.0.1:1",
        "BROKER_NET_RESEARCHER_DATA_DIR": str(tmp_path / "researcher"),
        "BROKER_NET_RESEARCHER_SECURITY": "false",
    }
    with dashboard_process(env, "--interval", "0.5") as dashboard, headless_chromium() as driver:
        driver.get(f"{dashboard.base}/?token=not-the-token")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "403 forbidden" in body
        assert "broker-net dashboard" not in driver.page_source
        for path in ("/", "/events", "/snapshot.json", "/static/dashboard.js"):
            for token in (None, "", "not-the-token", dashboard.token + "x"):
                response = refused(dashboard, path, token)
                assert response.status_code == 403, (path, token)
                assert "namespace" not in response.text and "job" not in response.text

        driver.get(dashboard.url)
        assert driver.title == "broker-net dashboard"
        wait_for(driver, "updates arrive", lambda d: attribute(d, "#live", "data-live") == "yes")
        wait_for(driver, "the broker shows as unreachable", lambda d: "unreachable" in (
            d.execute_script("return document.getElementById('status').textContent;")))  # fmt: skip
        assert "no job store yet" in driver.execute_script(
            "return document.getElementById('status').textContent;"
        )
        assert not (tmp_path / "researcher" / "jobs.sqlite").exists()
        snapshot = refused(dashboard, "/snapshot.json", dashboard.token).json()
        assert snapshot["store"]["jobs"] == [] and snapshot["sources"][1]["ok"] is False
        assert httpx.post(dashboard.url, timeout=10).status_code == 405


def test_an_asynchronous_task_advances_by_versions_without_a_reload(tmp_path: Path) -> None:
    data_dir = tmp_path / "researcher"
    with JobStore(data_dir) as store:
        job_id = running_async_job(store)
    env = {
        "BROKER_NET_RESEARCHER_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
        "BROKER_NET_RESEARCHER_MANAGEMENT_URL": "http://127.0.0.1:1",
        "BROKER_NET_RESEARCHER_DATA_DIR": str(data_dir),
        "BROKER_NET_RESEARCHER_SECURITY": "false",
    }
    counter = '.version-counter[data-task="train"]'
    with dashboard_process(env, "--interval", "0.5") as dashboard, headless_chromium() as driver:
        driver.get(dashboard.url)
        driver.execute_script("window.loadedOnce = true;")
        wait_for(driver, "version 0 of 4 shows", lambda d: (
            attribute(d, counter, "data-version"), attribute(d, counter, "data-versions")
        ) == ("0", "4"))  # fmt: skip
        assert attribute(driver, 'td[data-fate="in_flight"]', "data-fate") == "in_flight"
        with JobStore(data_dir) as store:
            applied = [
                UpdateRecord(rid, node, 0, UpdateStatus.APPLIED, staleness=0, weight=1.0,
                             applied_in=1, sample_size=10, metrics={"accuracy": 0.9})
                for rid, node in (("u1", "n1"), ("u3", "n2"))
            ]  # fmt: skip
            version = VersionRecord(1, {"accuracy": 0.9}, ["u1", "u3"], ["n1", "n2"], [0, 0], 1.5)
            model = store.model_dir(job_id, "train", 1) / "version-1.npz"
            store.commit_version(job_id, "train", 1, version, applied, model, "version 1")
        wait_for(driver, "the version counter advances",
                 lambda d: attribute(d, counter, "data-version") == "1")  # fmt: skip
        fates = driver.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('td[data-fate]')]"
            ".map(td => [td.dataset.fate, td.textContent]));"
        )
        assert fates["applied"] == "2" and fates["in_flight"] == "0"
        assert number(driver, 'svg.chart[data-chart="accuracy"]', "data-points") == 1
        assert driver.execute_script("return window.loadedOnce === true;"), "the page reloaded"
