"""The dashboard without a browser: what it reads from the store, its charts and DAG, the
token gate of its app, and its command's one-line failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest

from researcher.dashboard.app import SECURITY_HEADERS, Dashboard
from researcher.dashboard.charts import Series, line_chart
from researcher.dashboard.dag_view import dag_svg
from researcher.dashboard.page import page_html, sections
from researcher.dashboard.server import is_loopback
from researcher.dashboard.snapshot import (
    JobDetail,
    Snapshot,
    StoreReader,
    StoreView,
    pick_job,
    read_job,
    read_jobs,
)
from researcher.dashboard.watch import BrokerWatch
from researcher.orchestration.lifecycle import State
from researcher.orchestration.store.job_store import JobStore
from researcher.orchestration.store.records import NodeResult, ProgressRecord, RoundRow
from researcher.settings import ResearcherSettings
from tests.conftest import MANAGEMENT_URL
from tests.researcher.orchestration.test_scheduler import network, scheduler_for, training_job
from tests.support.dashboard_process import dashboard_process
from tests.support.processes import ROOT

TOKEN = "the-right-token"


def running_job(store: JobStore) -> str:
    """A job whose training finished round 1 of 3 and sent round 2 to n1 and n2, of which
    n1 answered: written to the store as the orchestration layer writes it."""
    job = store.create_job(training_job("watched", rounds=3).spec, researcher_id="alice")
    store.set_job_state(job.job_id, State.RUNNING, "running on n1, n2")
    for task in ("approve", "check", "stats", "scale"):
        store.set_task_state(job.job_id, task, State.RUNNING, "started")
        store.set_task_state(job.job_id, task, State.SUCCESS, "done")
    store.set_task_state(job.job_id, "train", State.RUNNING, "started")
    sent = datetime.now(UTC) - timedelta(seconds=2)
    results = [
        NodeResult("n1", "r1", "SUCCESS", sent_at=sent, round_trip=0.5, processing=0.4,
                   sample_size=10, metrics={"accuracy": 0.8}),
        NodeResult("n2", "r1", "FAILED", reason="timed out", sent_at=sent),
    ]  # fmt: skip
    row = RoundRow("train", 1, 1, "r1", {"accuracy": 0.8}, {"n2": "timed out"}, 0.6, "now")
    model = store.model_dir(job.job_id, "train", 1) / "round-1.npz"
    store.commit_round(job.job_id, "train", 1, row, results, model, 3)
    store.record_request(job.job_id, "train", 1, "round-2", "r2", ["n1", "n2"])
    store.record_sent("r2", {"n1": sent, "n2": sent})
    store.record_answer("r2", "n1")
    return job.job_id


def test_a_running_job_its_tasks_rounds_and_the_round_in_flight(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        job_id = running_job(store)
        jobs = read_jobs(store)
        detail = read_job(store, job_id)

    assert [(j.job_id, j.state) for j in jobs] == [(job_id, "running")]
    assert pick_job(jobs, None) == job_id and pick_job(jobs, "job_gone") == job_id
    states = {t.name: (t.state, sorted(t.upstream)) for t in detail.tasks}
    assert states["train"] == ("running", ["check", "scale", "stats"])
    assert states["approve"] == ("success", [])
    (training,) = detail.training
    assert (training.task, training.done, training.total) == ("train", 1, 3)
    done, current = training.rounds
    assert (done.number, done.in_progress, done.metrics) == (1, False, {"accuracy": 0.8})
    parts = {n.node_id: n for n in done.nodes}
    assert parts["n1"].status == "SUCCESS" and parts["n1"].round_trip == 0.5
    assert parts["n2"].status == "FAILED" and parts["n2"].reason == "timed out"
    assert (current.number, current.in_progress) == (2, True)
    waiting = {n.node_id: n.status for n in current.nodes}
    assert waiting == {"n1": "answered", "n2": "waiting"}
    assert all(n.waited is not None and n.waited >= 2 for n in current.nodes)


def client(dashboard: Dashboard) -> httpx.AsyncClient:
    """An HTTP client of the dashboard's app, in this process."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=dashboard.app()), base_url="http://127.0.0.1"
    )


@pytest.mark.anyio
async def test_the_page_shows_the_job_its_dag_counter_and_charts(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        job_id = running_job(store)
    reader = StoreReader(tmp_path)
    dashboard = Dashboard(reader, BrokerWatch(ResearcherSettings(data_dir=tmp_path)), token=TOKEN)
    async with client(dashboard) as http:
        page = (await http.get("/", params={"token": TOKEN})).text
    reader.close()

    assert f'data-job="{job_id}"' in page
    assert 'class="round-counter" data-task="train" data-round="1" data-rounds="3"' in page
    assert "round 2 running: 1 of 2 nodes answered" in page
    assert '<g class="task" data-task="train" data-state="running">' in page
    assert 'data-chart="accuracy" data-points="2"' in page  # all nodes, and n1
    assert 'data-chart="request round trip (s)" data-points="1"' in page
    assert f"static/dashboard.js?token={TOKEN}&amp;job=" not in page  # no job asked for
    assert "https://" not in page and "http://cdn" not in page


@pytest.mark.anyio
async def test_every_route_needs_the_token_and_nothing_changes_anything(tmp_path: Path) -> None:
    reader = StoreReader(tmp_path / "nowhere")
    dashboard = Dashboard(reader, BrokerWatch(ResearcherSettings(data_dir=tmp_path)), token=TOKEN)
    async with client(dashboard) as http:
        for path in ("/", "/events", "/snapshot.json", "/static/dashboard.js", "/nope"):
            for params in ({}, {"token": ""}, {"token": "wrong"}, {"token": TOKEN + "x"}):
                refused = await http.get(path, params=params)
                assert refused.status_code == 403, (path, params)
                assert "job" not in refused.text
        assert (await http.post("/", params={"token": TOKEN})).status_code == 405
        answer = await http.get("/snapshot.json", params={"token": TOKEN})
        script = await http.get("/static/dashboard.js", params={"token": TOKEN})
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert answer.json()["store"]["status"].startswith("no job store yet")
    assert [s["ok"] for s in answer.json()["sources"]] == [None, None]
    assert "EventSource" in script.text and "http" not in script.text
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.anyio
async def test_the_page_shows_no_password_of_the_management_url(tmp_path: Path) -> None:
    settings = ResearcherSettings(
        data_dir=tmp_path, management_url="http://ops:secret@127.0.0.1:15672"
    )
    dashboard = Dashboard(StoreReader(tmp_path), BrokerWatch(settings), token=TOKEN)
    snapshot = await dashboard.snapshot(None)
    assert snapshot.management_url == "http://127.0.0.1:15672"
    assert "secret" not in page_html(snapshot, TOKEN, None)


@pytest.mark.anyio
async def test_a_job_run_over_the_network_reads_back_whole(tmp_path: Path) -> None:
    # Every round must reach both nodes: a node is sampled only while its heartbeats are on
    # time, and on a busy host this one event loop may stall for longer than 3 x 0.2 s.
    async with network(tmp_path, heartbeat_interval=2) as requests:
        with JobStore(tmp_path / "researcher") as store:
            scheduler = scheduler_for(tmp_path, requests, store)
            job = scheduler.submit(training_job(rounds=2).spec)
            await scheduler.run_job(job.job_id)
            detail = read_job(store, job.job_id)

    why = [(t.name, t.state, t.reason) for t in detail.tasks]
    assert detail.job.state == "success", (detail.job.reason, why)
    (training,) = detail.training
    assert (training.done, training.total) == (2, 2)
    assert [r.number for r in training.rounds] == [1, 2]
    for r in training.rounds:
        statuses = {n.node_id: n.status for n in r.nodes}
        assert statuses == {"n1": "SUCCESS", "n2": "SUCCESS"}, [n.reason for n in r.nodes]
        assert all(n.round_trip is not None and n.metrics for n in r.nodes)
        assert "accuracy" in r.metrics


@pytest.mark.anyio
async def test_progress_reports_make_the_live_charts_and_only_new_ones_are_read(
    tmp_path: Path,
) -> None:
    with JobStore(tmp_path) as store:
        job_id = running_job(store)
        now = datetime.now(UTC)

        def report(node: str, round_number: int, seconds: float, loss: float) -> None:
            record = ProgressRecord(
                id=0, job_id=job_id, task="train", round=round_number, node_id=node,
                request_id="r2", at=now + timedelta(seconds=seconds),
                values={"iteration": seconds, "loss": loss},
            )  # fmt: skip
            store.add_progress(job_id, "train", record)

        report("n1", 2, 0.0, 0.9)
        report("n2", 2, 0.5, 0.8)
        reader = StoreReader(tmp_path)
        first = reader.read(job_id).job
        report("n1", 2, 1.0, 0.7)
        second = reader.read(job_id).job
        reader.close()

    assert first is not None and second is not None
    assert [p.values["loss"] for p in first.training[0].progress] == [0.9, 0.8]
    assert [p.values["loss"] for p in second.training[0].progress] == [0.9, 0.8, 0.7]
    html = sections_of(second)["job"]
    assert 'data-chart="live loss" data-points="3"' in html
    assert 'data-chart="live iteration"' not in html  # a counter, not a measure


def sections_of(detail: JobDetail) -> dict[str, str]:
    """The page's sections for a snapshot holding ``detail`` alone."""
    store = StoreView("test", [detail.job], detail)
    snapshot = Snapshot("2026-01-01T00:00:00+00:00", "ns", "http://127.0.0.1:15672", store,
                        [], [], [])  # fmt: skip
    return sections(snapshot, TOKEN)


@pytest.mark.anyio
async def test_the_watch_writes_nothing_and_says_what_it_cannot_do(tmp_path: Path) -> None:
    settings = ResearcherSettings(
        data_dir=tmp_path / "researcher", amqp_url="amqp://guest:guest@127.0.0.1:1/",
        management_url="http://127.0.0.1:1",
    )  # fmt: skip
    watch = BrokerWatch(settings, retry=0.1)
    async with anyio.create_task_group() as group:
        group.start_soon(watch.run)
        with anyio.fail_after(30):
            while watch.broker.ok is None or watch.management.ok is None:
                await anyio.sleep(0.05)
        group.cancel_scope.cancel()
    assert "no researcher identity in" in watch.broker.text
    assert watch.management.text.startswith("unreachable")
    assert watch.nodes(["n1"])[0].state == "unknown"
    assert not (tmp_path / "researcher").exists()


def test_charts_escape_skip_what_is_not_a_number_and_say_when_empty() -> None:
    chart = line_chart(
        "<b>loss</b>",
        [Series("n<1>", [(1, 0.5), (2, float("nan")), (3, 0.25)]), Series("n2", [(1, 1.0)])],
        x_label="round",
    )
    assert 'data-chart="&lt;b&gt;loss&lt;/b&gt;" data-points="3"' in chart
    assert "<b>" not in chart and "n&lt;1&gt;" in chart
    assert chart.count("<polyline") == 1 and chart.count("<circle") == 3
    empty = line_chart("accuracy", [], x_label="round")
    assert 'data-points="0"' in empty and "no data yet" in empty


def test_the_dag_puts_each_task_after_its_upstream(tmp_path: Path) -> None:
    with JobStore(tmp_path) as store:
        detail = read_job(store, running_job(store))
    svg = dag_svg(detail.tasks)
    x = {}
    for task in ("approve", "check", "stats", "scale", "train"):
        head = svg.index(f'data-task="{task}"')
        x[task] = float(
            svg[svg.index('x="', head) + 3 : svg.index('"', svg.index('x="', head) + 3)]
        )
    assert x["approve"] == x["stats"] < x["check"] == x["scale"] < x["train"]
    assert svg.count("<line") == 5  # approve→check, stats→scale, check/scale/stats→train


@pytest.mark.anyio
async def test_sections_are_what_the_page_holds(tmp_path: Path) -> None:
    reader = StoreReader(tmp_path)
    dashboard = Dashboard(reader, BrokerWatch(ResearcherSettings(data_dir=tmp_path)), token=TOKEN)
    snapshot = await dashboard.snapshot(None)
    page = page_html(snapshot, TOKEN, None)
    for key, html in sections(snapshot, TOKEN).items():
        assert f'id="{key}"' in page and html in page


def test_only_loopback_addresses_count_as_this_machine() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        assert not is_loopback(host), host


def dashboard_command(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"BROKER_NET_RESEARCHER_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", "from researcher.cli.main import main; main()", "dashboard",
         *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (("--port", "{busy}"), 1, "port {busy} on 127.0.0.1 is in use; choose another"),
        (("--host", "203.0.113.9", "--port", "0"), 1, "cannot listen on 203.0.113.9:0"),
        (("--port", "70000"), 2, "--port 70000 is not a port"),
        (("--interval", "0"), 2, "invalid value for '--interval'"),
    ],
)
def test_the_command_fails_in_one_line(
    tmp_path: Path, args: tuple[str, ...], code: int, line: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        done = dashboard_command(*(a.replace("{busy}", port) for a in args), data_dir=tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert line.replace("{busy}", port) in done.stderr.lower()
    assert done.stdout == ""


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("stop", "serving"),
    [(signal.SIGTERM, True), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-at-once"],
)
def test_the_command_stops_cleanly_on_sigterm_and_ctrl_c(
    tmp_path: Path, amqp_url: str, namespace: str, stop: signal.Signals, serving: bool
) -> None:
    with JobStore(tmp_path / "researcher") as store:
        spec = training_job("shown", rounds=1, parallelism=1).spec
        job = store.create_job(spec, researcher_id="alice")
    env = {
        "BROKER_NET_RESEARCHER_AMQP_URL": amqp_url,
        "BROKER_NET_RESEARCHER_NAMESPACE": namespace,
        "BROKER_NET_RESEARCHER_MANAGEMENT_URL": MANAGEMENT_URL,
        "BROKER_NET_RESEARCHER_DATA_DIR": str(tmp_path / "researcher"),
        "BROKER_NET_RESEARCHER_SECURITY": "false",
    }
    with dashboard_process(env, "--interval", "0.5") as dashboard:
        if serving:  # its page shows the store; its watch on the broker started
            snapshot = httpx.get(f"{dashboard.base}/snapshot.json",
                                 params={"token": dashboard.token}, timeout=30).json()  # fmt: skip
            assert [j["job_id"] for j in snapshot["store"]["jobs"]] == [job.job_id]
        dashboard.process.send_signal(stop)
        code = dashboard.process.wait(timeout=30)
        assert dashboard.process.stderr is not None and dashboard.process.stdout is not None
        stderr, stdout = dashboard.process.stderr.read(), dashboard.process.stdout.read()
    assert code == 0, stderr
    assert stderr == "dashboard stopped\n"
    assert stdout == ""  # only the URL, read before
    with pytest.raises(httpx.ConnectError):
        httpx.get(dashboard.base, timeout=5)
