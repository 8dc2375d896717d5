"""Above both parties: the in-process federation, the demo and its data.

- :mod:`~simulation.federation`: :func:`simulate` a :class:`~researcher.FedJob` with node
  agents in this process, on the in-memory transport;
- :mod:`~simulation.demo`: the demo story end to end (``python -m simulation.demo``);
- :mod:`~simulation.demo_setup` and :mod:`~simulation.sample_data`: the demo's data, a shard
  per node;
- :mod:`~simulation.cli`: the ``broker-net-demo`` command.

It imports both :mod:`node_agent` and :mod:`researcher`, which never import each other nor it.
"""

from simulation.demo_plan import BreastCancerPlan
from simulation.demo_setup import DEMO_TAG, register_demo_shard
from simulation.federation import SIMULATION_RESEARCHER, operator, simulate, simulate_async
from simulation.sample_data import breast_cancer

__all__ = [
    "DEMO_TAG",
    "SIMULATION_RESEARCHER",
    "BreastCancerPlan",
    "breast_cancer",
    "operator",
    "register_demo_shard",
    "simulate",
    "simulate_async",
]
