"""A job's task DAG as SVG: each task a box coloured by its state, upstream tasks to its left.

A task's column is the length of the longest chain of tasks it waits for; tasks in a column
keep the job's order. Each box carries ``data-task`` and ``data-state``.
"""

from __future__ import annotations

from html import escape

from researcher.dashboard.snapshot import TaskRow

STATE_COLOURS = {
    "waiting": ("#eeeeee", "#777777"),
    "running": ("#d6e8ff", "#1f6fd1"),
    "success": ("#d9f2dc", "#2e8b3d"),
    "failed": ("#fbdada", "#c62828"),
    "timeout": ("#ffe9cc", "#d9822b"),
    "canceled": ("#e0e0e0", "#444444"),
}
"""Fill and border of a task's box, by state."""

_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 150, 46, 46, 14, 8


def dag_svg(tasks: list[TaskRow]) -> str:
    """The tasks and their dependencies, as SVG."""
    if not tasks:
        return '<p class="muted">This job has no task.</p>'
    names = {task.name for task in tasks}
    column: dict[str, int] = {}
    for task in tasks:  # the store lists tasks upstream first
        ups = [u for u in task.upstream if u in names]
        column[task.name] = 1 + max((column.get(u, 0) for u in ups), default=-1)
    rows: dict[int, int] = {}
    position: dict[str, tuple[float, float]] = {}
    for task in tasks:
        col = column[task.name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        position[task.name] = (_PAD + col * (_BOX_W + _GAP_X), _PAD + row * (_BOX_H + _GAP_Y))
    width = _PAD * 2 + (max(column.values()) + 1) * (_BOX_W + _GAP_X) - _GAP_X
    height = _PAD * 2 + max(rows.values()) * (_BOX_H + _GAP_Y) - _GAP_Y
    parts = [
        f'<svg class="dag" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="task graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#888"/></marker></defs>',
    ]
    for task in tasks:
        x2, y2 = position[task.name]
        for upstream in dict.fromkeys(task.upstream):
            if upstream not in position:
                continue
            x1, y1 = position[upstream]
            parts.append(
                f'<line x1="{x1 + _BOX_W:.0f}" y1="{y1 + _BOX_H / 2:.0f}" x2="{x2:.0f}" '
                f'y2="{y2 + _BOX_H / 2:.0f}" stroke="#888" stroke-width="1.2" '
                'marker-end="url(#arrow)"/>'
            )
    for task in tasks:
        x, y = position[task.name]
        fill, border = STATE_COLOURS.get(task.state, ("#fff", "#000"))
        detail = f"{task.kind} · {task.state}"
        if task.attempt > 1:
            detail += f" · try {task.attempt}"
        parts.append(
            f'<g class="task" data-task="{escape(task.name)}" data-state="{escape(task.state)}">'
            f"<title>{escape(task.name)}: {escape(task.reason)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{_BOX_W}" height="{_BOX_H}" rx="6" '
            f'fill="{fill}" stroke="{border}" stroke-width="2"/>'
            f'<text x="{x + _BOX_W / 2:.0f}" y="{y + 19:.0f}" text-anchor="middle" '
            f'font-size="13" font-weight="bold">{escape(_fit(task.name, 20))}</text>'
            f'<text x="{x + _BOX_W / 2:.0f}" y="{y + 36:.0f}" text-anchor="middle" '
            f'font-size="11" fill="{border}">{escape(_fit(detail, 26))}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
