"""Codec cost of a large training request, against plain msgpack on the same bytes.

A :class:`TrainRequest` carrying 100 MB of float32 parameters is encoded and decoded back into a
message; the baseline packs and unpacks the same 100 MB as a single msgpack bin with
``msgpack.packb``/``unpackb``, in the same run. Each figure is the median of several
repetitions.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from bench import Row, row
from broker_net.codec import decode_message, encode
from broker_net.messages import TrainRequest

PAYLOAD_BYTES = 100 * 1024**2
LAYERS = 4
REPETITIONS = 7
TARGET = 1.25


def _train_request() -> TrainRequest:
    rng = np.random.default_rng(0)
    per_layer = PAYLOAD_BYTES // LAYERS // 4
    params = {
        f"layers.{index}.weight": rng.standard_normal(per_layer, dtype=np.float32).reshape(-1, 1024)
        for index in range(LAYERS)
    }
    return TrainRequest(
        researcher_id="bench",
        experiment_id="bench",
        round=1,
        training_plan="class Plan: ...",
        training_plan_class="Plan",
        dataset_id="bench",
        params=params,
    )


def _median_seconds(operation: Callable[[], Any], repetitions: int) -> float:
    timings = []
    for _ in range(repetitions):
        gc.collect()
        start = time.perf_counter()
        result = operation()
        timings.append(time.perf_counter() - start)
        del result
    return statistics.median(timings)


def run(repetitions: int = REPETITIONS) -> list[Row]:
    """Measure encode, decode and both, ours against msgpack, in milliseconds."""
    message = _train_request()
    blob = b"".join(array.tobytes() for array in message.params.values())
    assert len(blob) == PAYLOAD_BYTES
    ours_data = encode(message)
    plain_data = msgpack.packb(blob)

    check = decode_message(ours_data)
    assert isinstance(check, TrainRequest)
    assert all(np.array_equal(check.params[k], v) for k, v in message.params.items())
    del check

    ours_encode = _median_seconds(lambda: encode(message), repetitions)
    plain_encode = _median_seconds(lambda: msgpack.packb(blob), repetitions)
    ours_decode = _median_seconds(lambda: decode_message(ours_data), repetitions)
    plain_decode = _median_seconds(lambda: msgpack.unpackb(plain_data), repetitions)
    ours_both = _median_seconds(lambda: decode_message(encode(message)), repetitions)
    plain_both = _median_seconds(lambda: msgpack.unpackb(msgpack.packb(blob)), repetitions)

    size = f"TrainRequest {PAYLOAD_BYTES // 1024**2} MB f32"
    ms = 1000
    return [
        row(f"codec encode, {size}", ours_encode * ms, plain_encode * ms, "ms", None),
        row(f"codec decode, {size}", ours_decode * ms, plain_decode * ms, "ms", None),
        row(
            f"codec encode+decode, {size}",
            ours_both * ms,
            plain_both * ms,
            "ms",
            TARGET,
        ),
    ]
