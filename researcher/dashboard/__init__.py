"""The live dashboard: a read-only web page of jobs, their tasks and rounds, nodes and queues.

``researcher dashboard`` serves it on 127.0.0.1 (see :mod:`researcher.cli.dashboard`).
"""

from researcher.dashboard.app import Dashboard, TokenGate
from researcher.dashboard.async_view import (
    AsyncTrainingView,
    InFlightUpdate,
    VersionView,
    read_async_training,
)
from researcher.dashboard.charts import Series, line_chart
from researcher.dashboard.dag_view import dag_svg
from researcher.dashboard.page import page_html, sections
from researcher.dashboard.server import bind, is_loopback, serve, url_of
from researcher.dashboard.snapshot import (
    JobDetail,
    JobRow,
    NodeRound,
    ProgressPoint,
    RoundView,
    Snapshot,
    StoreReader,
    StoreView,
    TaskRow,
    TrainingView,
    pick_job,
    read_job,
    read_jobs,
)
from researcher.dashboard.watch import BrokerWatch, NodeRow, QueueRow, SourceStatus

__all__ = [
    "AsyncTrainingView",
    "BrokerWatch",
    "Dashboard",
    "InFlightUpdate",
    "JobDetail",
    "JobRow",
    "NodeRound",
    "NodeRow",
    "ProgressPoint",
    "QueueRow",
    "RoundView",
    "Series",
    "Snapshot",
    "SourceStatus",
    "StoreReader",
    "StoreView",
    "TaskRow",
    "TokenGate",
    "TrainingView",
    "VersionView",
    "bind",
    "dag_svg",
    "is_loopback",
    "line_chart",
    "page_html",
    "pick_job",
    "read_async_training",
    "read_job",
    "read_jobs",
    "sections",
    "serve",
    "url_of",
]
