"""SCAFFOLD on the node: its control variate ``c_i`` kept between rounds.

A training request whose auxiliary variables hold the server control variate ``scaffold_c``
(see :mod:`training_plans.corrections`) gets the node's own ``c_i`` added as ``scaffold_ci``
before the plan runs: zeros in the node's first round of the experiment, then what it kept.
After the round the node keeps ``c_i + Δc_i``, with ``Δc_i`` the plan's ``scaffold_delta_c``
(which alone goes back to the researcher). ``c_i`` lives in the node's state store
(:mod:`node_agent.state`) under a state id derived from the researcher, experiment, plan and
dataset, so it survives a restart of the agent and never mixes experiments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from broker_net.messages import TrainRequest
from node_agent.plans import compute_plan_id
from node_agent.state import NodeStateStore
from training_plans.corrections import SCAFFOLD_C, SCAFFOLD_CI, SCAFFOLD_DELTA_C

_ENTRY = "scaffold_ci"


def control_state_id(request: TrainRequest) -> str:
    """The state id of the node's ``c_i`` for the request's researcher, experiment, plan and
    dataset."""
    key = "\0".join(
        [
            "scaffold",
            request.researcher_id,
            request.experiment_id,
            compute_plan_id(request.training_plan),
            request.training_plan_class,
            request.dataset_id,
        ]
    )
    return "state_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def load_client_variate(states: NodeStateStore, request: TrainRequest) -> dict[str, Any] | None:
    """The node's kept ``c_i`` for this request's experiment and plan, if any."""
    state_id = control_state_id(request)
    if not states.exists(state_id):
        return None
    return dict(states.load(state_id).get(_ENTRY) or {}) or None


def with_client_variate(
    states: NodeStateStore, request: TrainRequest, aux_var: Mapping[str, Any]
) -> dict[str, Any]:
    """``aux_var`` for the plan: with the node's ``c_i`` under a SCAFFOLD round (never one the
    researcher sent)."""
    result = {k: v for k, v in aux_var.items() if k != SCAFFOLD_CI}
    if SCAFFOLD_C in result and request.training:
        c_i = load_client_variate(states, request)
        if c_i is not None:
            result[SCAFFOLD_CI] = c_i
    return result


def keep_client_variate(
    states: NodeStateStore,
    request: TrainRequest,
    aux_var: Mapping[str, Any],
    returned: Mapping[str, Any],
) -> None:
    """Keep ``c_i + Δc_i`` after a SCAFFOLD round (``aux_var`` as given to the plan,
    ``returned`` what it gave back)."""
    delta = returned.get(SCAFFOLD_DELTA_C)
    if SCAFFOLD_C not in aux_var or not isinstance(delta, Mapping):
        return
    c_i = aux_var.get(SCAFFOLD_CI) or {}
    updated = {
        name: np.asarray(c_i.get(name, 0.0), dtype=np.float64) + np.asarray(value, np.float64)
        for name, value in delta.items()
    }
    state_id = control_state_id(request)
    states.create(state_id)
    states.save(state_id, {_ENTRY: updated})
