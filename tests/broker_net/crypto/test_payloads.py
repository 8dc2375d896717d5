"""Training payloads: sealed by one party, opened by the other only under the same binding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from broker_net.crypto.encryption import DecryptionError
from broker_net.crypto.identities import Identity
from broker_net.crypto.payloads import PayloadBinding, encrypted_fields

RESEARCHER = Identity.generate("lab", "researcher")
NODE = Identity.generate("hospital-a", "node")
BINDING = PayloadBinding("exp-1", 2, "hospital-a", "request_1")
ARRAYS = {"w": np.arange(4.0), "b": np.float64(0.5)}


def test_the_node_opens_what_the_researcher_sealed() -> None:
    sealed = BINDING.seal(RESEARCHER, NODE.public(), "params", ARRAYS)
    assert encrypted_fields({"params": sealed, "optim_aux_var": None}) == {"params": sealed}
    opened = BINDING.open(NODE, RESEARCHER.public(), "params", sealed)
    assert np.array_equal(opened["w"], ARRAYS["w"]) and opened["b"] == 0.5


@pytest.mark.parametrize(
    "other",
    [
        dataclasses.replace(BINDING, round=3),
        dataclasses.replace(BINDING, node_id="hospital-b"),
        dataclasses.replace(BINDING, request_id="request_2"),
        dataclasses.replace(BINDING, experiment_id="exp-2"),
    ],
)
def test_a_payload_does_not_open_under_another_binding(other: PayloadBinding) -> None:
    sealed = BINDING.seal(RESEARCHER, NODE.public(), "optim_aux_var", ARRAYS)
    with pytest.raises(DecryptionError):
        other.open(NODE, RESEARCHER.public(), "optim_aux_var", sealed)


def test_a_payload_does_not_open_as_the_other_field() -> None:
    sealed = BINDING.seal(RESEARCHER, NODE.public(), "optim_aux_var", ARRAYS)
    with pytest.raises(DecryptionError):
        BINDING.open(NODE, RESEARCHER.public(), "params", sealed)


def test_plain_fields_are_not_encrypted_fields() -> None:
    assert encrypted_fields({"params": {"w": np.zeros(2)}, "optim_aux_var": {}}) == {}
