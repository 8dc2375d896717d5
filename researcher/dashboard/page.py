"""The dashboard page as HTML, in sections the page's script replaces as updates arrive.

:func:`sections` renders each section (``status``, ``jobs``, ``job``, ``nodes``) of a
:class:`~researcher.dashboard.snapshot.Snapshot`; :func:`page_html` puts them in the page.
Every value from the store or the broker is escaped. Elements a person or a test looks for
carry data attributes: ``data-job``, ``data-state``, ``data-round``, ``data-node`` (and for an
asynchronous training task ``data-version``, ``data-fate``).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from urllib.parse import urlencode

from researcher.dashboard.async_view import AsyncTrainingView
from researcher.dashboard.charts import PALETTE, Series, line_chart
from researcher.dashboard.dag_view import dag_svg
from researcher.dashboard.snapshot import (
    JobDetail,
    ProgressPoint,
    RoundView,
    Snapshot,
    TrainingView,
)
from researcher.dashboard.watch import NodeRow

METRICS_CHARTED = 4
"""The first metrics (by name) of a training task that get a chart each."""

ROUNDS_LISTED = 8
"""The last rounds of a training task listed in its table."""

COUNTERS = frozenset({"iteration", "step", "epoch", "batch"})
"""Progress values that count where a node is rather than measure it: not charted live."""

SECTIONS = ("status", "jobs", "job", "nodes")
"""The parts of the page that updates replace."""


def page_html(snapshot: Snapshot, token: str, job_id: str | None) -> str:
    """The whole page, with the current snapshot in it."""
    query = _query(token, job_id)
    parts = sections(snapshot, token)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        "<title>broker-net dashboard</title>"
        f'<link rel="stylesheet" href="static/dashboard.css?{query}">'
        f'<script defer src="static/dashboard.js?{query}"></script>'
        "</head><body>"
        '<header><h1>broker-net dashboard</h1><div id="status">'
        f"{parts['status']}</div></header>"
        f'<main><section id="jobs" class="panel">{parts["jobs"]}</section>'
        f'<section id="job" class="panel">{parts["job"]}</section>'
        f'<section id="nodes" class="panel">{parts["nodes"]}</section></main>'
        "<footer>Read-only. Queues, message rates and dead letters: the "
        f'<a href="{escape(snapshot.management_url)}">RabbitMQ management UI</a>.'
        ' <span id="live" data-live="no">connecting…</span></footer>'
        "</body></html>"
    )


def sections(snapshot: Snapshot, token: str) -> dict[str, str]:
    """The inner HTML of each section of :data:`SECTIONS`."""
    return {
        "status": _status(snapshot),
        "jobs": _jobs(snapshot, token),
        "job": _job(snapshot.store.job),
        "nodes": _nodes(snapshot),
    }


def _query(token: str, job_id: str | None) -> str:
    return escape(urlencode({"token": token, **({"job": job_id} if job_id else {})}))


def _status(snapshot: Snapshot) -> str:
    items = [f"namespace <b>{escape(snapshot.namespace)}</b>"]
    for source in snapshot.sources:
        state = {True: "ok", False: "bad", None: "unknown"}[source.ok]
        items.append(
            f'<span class="source source-{state}" data-source="{escape(source.name)}">'
            f"{escape(source.name)}: {escape(source.text)}</span>"
        )
    items.append(f"<span>{escape(snapshot.store.status)}</span>")
    items.append(f'<span class="muted">at {escape(_clock(snapshot.taken_at))}</span>')
    return " · ".join(items)


def _jobs(snapshot: Snapshot, token: str) -> str:
    jobs = snapshot.store.jobs
    if not jobs:
        return "<h2>Jobs</h2><p class=muted>No job yet.</p>"
    shown = snapshot.store.job.job.job_id if snapshot.store.job else None
    rows = []
    for job in jobs:
        chosen = " chosen" if job.job_id == shown else ""
        orphaned = " (its process is gone)" if job.orphaned else ""
        rows.append(
            f'<tr class="job{chosen}" data-job="{escape(job.job_id)}" '
            f'data-state="{escape(job.state)}">'
            f'<td><a href="?{_query(token, job.job_id)}">{escape(job.name)}</a>'
            f'<div class="muted small">{escape(job.job_id)}</div>'
            f'<div class="small">{escape(job.reason)}{escape(orphaned)}</div></td>'
            f"<td>{_badge(job.state)}</td><td>{escape(_clock(job.updated_at))}</td></tr>"
        )
    return (
        "<h2>Jobs</h2><table><thead><tr><th>job</th><th>state</th><th>updated</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _job(detail: JobDetail | None) -> str:
    if detail is None:
        return "<h2>Job</h2><p class=muted>No job to show.</p>"
    job = detail.job
    nodes = ", ".join(job.nodes) or "not chosen yet"
    tasks = "".join(
        f'<tr data-task="{escape(t.name)}" data-state="{escape(t.state)}">'
        f"<td>{escape(t.name)}</td><td>{escape(t.kind)}</td><td>{_badge(t.state)}</td>"
        f"<td>{t.attempt}</td><td>{escape(t.reason)}</td></tr>"
        for t in detail.tasks
    )
    training = "".join(_training(view) for view in detail.training)
    training += "".join(_async_training(view) for view in detail.asynchronous)
    return (
        f'<h2 data-job="{escape(job.job_id)}">Job {escape(job.name)} {_badge(job.state)}</h2>'
        f'<p class="muted">{escape(job.job_id)} · nodes: {escape(nodes)} · '
        f"{escape(job.reason)}</p>"
        f'<div class="dag-box">{dag_svg(detail.tasks)}</div>'
        "<table><thead><tr><th>task</th><th>kind</th><th>state</th><th>try</th><th>why</th>"
        f"</tr></thead><tbody>{tasks}</tbody></table>{training}"
    )


def _training(view: TrainingView) -> str:
    finished = [r for r in view.rounds if not r.in_progress]
    current = next((r for r in view.rounds if r.in_progress), None)
    counter = (
        f'<span class="round-counter" data-task="{escape(view.task)}" data-round="{view.done}" '
        f'data-rounds="{view.total}">round {view.done} of {view.total}</span>'
    )
    if current is not None:
        answered = sum(1 for n in current.nodes if n.status == "answered")
        counter += (
            f' <span class="muted">· round {current.number} running: {answered} of '
            f"{len(current.nodes)} nodes answered</span>"
        )
    nodes = sorted({n.node_id for r in view.rounds for n in r.nodes}
                   | {p.node_id for p in view.progress})  # fmt: skip
    colours = {node: PALETTE[index % len(PALETTE)] for index, node in enumerate(nodes)}
    charts = [_metric_chart(name, finished, colours) for name in _metric_names(finished)]
    charts.append(_time_chart(finished, colours))
    charts.extend(_live_charts(view.progress, colours))
    return (
        f'<div class="training" data-task="{escape(view.task)}">'
        f"<h3>Training {escape(view.task)}: {counter}</h3>"
        f'<div class="charts">{"".join(charts)}</div>{_rounds_table(view.rounds)}</div>'
    )


def _metric_names(rounds: list[RoundView]) -> list[str]:
    names = sorted({name for r in rounds for name in r.metrics})
    return names[:METRICS_CHARTED]


def _metric_chart(name: str, rounds: list[RoundView], colours: dict[str, str]) -> str:
    """One metric by round: the aggregate (thick, black) and each node's value."""
    aggregate = Series("all nodes", [(r.number, r.metrics[name]) for r in rounds
                                     if name in r.metrics], emphasis=True)  # fmt: skip
    by_node: dict[str, list[tuple[float, float]]] = {}
    for r in rounds:
        for n in r.nodes:
            if name in n.metrics:
                by_node.setdefault(n.node_id, []).append((r.number, n.metrics[name]))
    series = [aggregate, *_by_node(by_node, colours)]
    return line_chart(name, series, x_label="round")


def _time_chart(rounds: list[RoundView], colours: dict[str, str]) -> str:
    """Each node's round trip by round, in seconds."""
    by_node: dict[str, list[tuple[float, float]]] = {}
    for r in rounds:
        for n in r.nodes:
            if n.round_trip is not None:
                by_node.setdefault(n.node_id, []).append((r.number, n.round_trip))
    return line_chart("request round trip (s)", _by_node(by_node, colours), x_label="round")


def _live_charts(progress: list[ProgressPoint], colours: dict[str, str]) -> list[str]:
    """What the nodes reported while training, by seconds since the first report shown
    (counters left out)."""
    if not progress:
        return []
    names = sorted({name for p in progress for name in p.values} - COUNTERS)
    names = names[:METRICS_CHARTED]
    start = min(p.at for p in progress)
    charts = []
    for name in names:
        by_node: dict[str, list[tuple[float, float]]] = {}
        for p in progress:
            if name in p.values:
                x = _seconds_between(start, p.at)
                by_node.setdefault(p.node_id, []).append((x, p.values[name]))
        charts.append(line_chart(f"live {name}", _by_node(by_node, colours), x_label="seconds"))
    return charts


def _by_node(points: dict[str, list[tuple[float, float]]], colours: dict[str, str]) -> list[Series]:
    return [Series(node, line, colour=colours.get(node)) for node, line in sorted(points.items())]


def _rounds_table(rounds: list[RoundView]) -> str:
    shown = list(reversed(rounds[-ROUNDS_LISTED:]))
    if not shown:
        return '<p class="muted">No round yet.</p>'
    nodes = sorted({n.node_id for r in shown for n in r.nodes})
    head = "".join(f"<th>{escape(node)}</th>" for node in nodes)
    rows = []
    for r in shown:
        by_node = {n.node_id: n for n in r.nodes}
        cells = []
        for node in nodes:
            part = by_node.get(node)
            if part is None:
                cells.append('<td class="muted">-</td>')
                continue
            if r.in_progress:
                waited = "" if part.waited is None else f" {part.waited:.1f} s"
                times = f"{part.status}{waited}"
            else:
                times = f"{_seconds(part.round_trip)} ({_seconds(part.processing)} work)"
            title = f' title="{escape(part.reason)}"' if part.reason else ""
            cells.append(
                f'<td class="status-{escape(part.status.lower())}"{title}>{escape(times)}</td>'
            )
        duration = "running" if r.in_progress else _seconds(r.duration)
        rows.append(f'<tr data-round="{r.number}"><td>{r.number}</td><td>{duration}</td>'
                    f"{''.join(cells)}</tr>")  # fmt: skip
    return (
        '<table class="rounds"><thead><tr><th>round</th><th>took</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="muted small">Each node: request round trip (its work in brackets).</p>'
    )


def _async_training(view: AsyncTrainingView) -> str:
    """An asynchronous task: versions (not rounds), their metrics and staleness, what became
    of the updates, and the requests the nodes are working on."""
    cap = "" if view.max_versions is None else f" of {view.max_versions}"
    counter = (
        f'<span class="version-counter" data-task="{escape(view.task)}" '
        f'data-version="{view.version}" data-versions="{view.max_versions or ""}">'
        f"version {view.version}{cap}</span>"
    )
    if view.in_flight:
        counter += f' <span class="muted">· {len(view.in_flight)} request(s) in flight</span>'
    nodes = sorted({p.node_id for p in view.progress} | {u.node_id for u in view.in_flight})
    colours = {node: PALETTE[index % len(PALETTE)] for index, node in enumerate(nodes)}
    names = sorted({name for v in view.versions for name in v.metrics})[:METRICS_CHARTED]
    charts = [
        line_chart(name, [Series("model version", [(v.number, v.metrics[name])
                   for v in view.versions if name in v.metrics], emphasis=True)],
                   x_label="version")
        for name in names
    ]  # fmt: skip
    staleness = [
        Series("mean", [(v.number, v.mean_staleness) for v in view.versions], emphasis=True),
        Series("max", [(v.number, float(max(v.staleness, default=0))) for v in view.versions]),
    ]
    charts.append(line_chart("staleness of applied updates", staleness, x_label="version"))
    charts.extend(_live_charts(view.progress, colours))
    fates = "".join(
        f'<td data-fate="{escape(fate)}">{count}</td>' for fate, count in view.fates.items()
    )
    head = "".join(f"<th>{escape(fate.replace('_', ' '))}</th>" for fate in view.fates)
    flying = "".join(
        f'<tr data-node="{escape(u.node_id)}"><td>{escape(u.node_id)}</td>'
        f"<td>{u.base_version}</td><td>{_seconds(u.waited)}</td></tr>"
        for u in view.in_flight
    )
    in_flight = (
        "<table><thead><tr><th>node</th><th>trains on version</th><th>waited</th></tr>"
        f"</thead><tbody>{flying}</tbody></table>"
        if flying
        else '<p class="muted">No request in flight.</p>'
    )
    listed = "".join(
        f'<tr data-version="{v.number}"><td>{v.number}</td><td>{v.elapsed:.1f} s</td>'
        f"<td>{escape(', '.join(v.nodes))}</td>"
        f"<td>{escape(', '.join(str(s) for s in v.staleness))}</td></tr>"
        for v in reversed(view.versions[-ROUNDS_LISTED:])
    )
    versions = (
        '<table class="versions"><thead><tr><th>version</th><th>at</th><th>updates from</th>'
        f"<th>their staleness</th></tr></thead><tbody>{listed}</tbody></table>"
        if listed
        else '<p class="muted">No version yet.</p>'
    )
    return (
        f'<div class="training async" data-task="{escape(view.task)}">'
        f"<h3>Asynchronous training {escape(view.task)}: {counter}</h3>"
        f'<div class="charts">{"".join(charts)}</div>'
        '<h4>Updates by fate</h4><table class="fates"><thead><tr>'
        f"{head}</tr></thead><tbody><tr>{fates}</tr></tbody></table>"
        f"<h4>Requests in flight</h4>{in_flight}<h4>Last versions</h4>{versions}"
        '<p class="muted small">Staleness: versions published between the one an update was '
        "trained on and the one that applied it; at: seconds since training started.</p></div>"
    )


def _nodes(snapshot: Snapshot) -> str:
    rows = "".join(_node_row(node) for node in snapshot.nodes)
    table = (
        "<table><thead><tr><th>node</th><th>state</th><th>beat</th><th>queued</th>"
        "<th>unacked</th><th>consumers</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        if snapshot.nodes
        else '<p class="muted">No node seen: no heartbeat and no node queue.</p>'
    )
    prefix = f"{snapshot.namespace}."
    queues = "".join(
        f'<tr data-queue="{escape(q.name)}"><td>{escape(q.name.removeprefix(prefix))}</td>'
        f"<td>{q.ready}</td><td>{q.unacked}</td><td>{q.consumers}</td>"
        f"<td>{q.publish_rate:.1f}</td><td>{q.deliver_rate:.1f}</td></tr>"
        for q in snapshot.queues
    )
    queue_table = (
        f'<h3>Queues <span class="muted small">{escape(prefix)}…</span></h3>'
        "<table><thead><tr><th>queue</th><th>ready</th><th>unacked</th>"
        '<th title="consumers">cons.</th><th>in/s</th><th>out/s</th></tr></thead>'
        f"<tbody>{queues}</tbody></table>"
        if snapshot.queues
        else '<p class="muted">No queue figures (the management API has not answered).</p>'
    )
    return f"<h2>Nodes</h2>{table}{queue_table}"


def _node_row(node: NodeRow) -> str:
    beat = "-" if node.seconds_since_heartbeat is None else f"{node.seconds_since_heartbeat:.1f} s"
    return (
        f'<tr class="node node-{escape(node.state)}" data-node="{escape(node.node_id)}" '
        f'data-state="{escape(node.state)}"><td>{escape(node.node_id)}'
        f'<div class="muted small">{escape(node.agent_version or "version unknown")}</div></td>'
        f'<td>{_badge(node.state)}<div class="small">{escape(node.reason)}</div></td>'
        f"<td>{beat}</td><td>{_count(node.queue_depth)}</td><td>{_count(node.unacked)}</td>"
        f"<td>{_count(node.consumers)}</td></tr>"
    )


def _badge(state: str) -> str:
    return f'<span class="badge state-{escape(state)}">{escape(state)}</span>'


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _clock(iso: str) -> str:
    """``HH:MM:SS`` of an ISO time (UTC as the store writes it)."""
    time_part = iso.partition("T")[2] or iso
    return time_part[:8] + (" UTC" if "+00:00" in iso or iso.endswith("Z") else "")


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
