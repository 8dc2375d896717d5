"""The ``researcher`` command: nodes, status, jobs, outputs, identity and trust.

- :mod:`~researcher.cli.main`: the ``researcher`` app, with ``status`` and ``ping``;
- :mod:`~researcher.cli.jobs`: ``researcher job ...`` and ``researcher output ...``;
- :mod:`~researcher.cli.security`: ``identity``, ``trust`` and ``provision``;
- :mod:`~researcher.cli.status`: what ``researcher status`` reports;
- :mod:`~researcher.cli.dashboard`: ``researcher dashboard``, the live page.
"""

from researcher.cli.dashboard import dashboard_command
from researcher.cli.jobs import job_app, output_app, standalone_app
from researcher.cli.main import app
from researcher.cli.security import identity_app, provision_command, trust_app
from researcher.cli.status import NodeStatus, collect_status

__all__ = [
    "NodeStatus",
    "app",
    "collect_status",
    "dashboard_command",
    "identity_app",
    "job_app",
    "output_app",
    "provision_command",
    "standalone_app",
    "trust_app",
]
