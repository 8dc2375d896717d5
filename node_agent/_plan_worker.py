"""The child process that runs training plans: ``python -m node_agent._plan_worker --serve SPEC``.

It first confines itself as SPEC says (see :mod:`node_agent._confine`), then serves jobs: each
arrives as a frame on its standard input (see :mod:`node_agent.plan_process`) and its result
goes back as a frame on its result pipe, both msgpack. Nothing is pickled. A job holds
``source``, ``class_name``, ``params``, ``model_args``, ``training_args``, ``training``, the
data (``columns``, ``values``, ``target``), the split (``validation_fraction``,
``split_seed``) and optionally ``aux_var``. A prediction job holds ``task: "predict"``,
``source``, ``class_name``, ``params``, ``model_args`` and the features (``columns``,
``values``). The result is either::

    {"ok": True, "params": {...}, "aux_var": {...}, "sample_size": n, "metrics": {...},
     "timing": {...}}
    {"ok": True, "predictions": array, "classifier": True}
    {"ok": False, "stage": "train", "error_type": "ValueError", "message": "...",
     "traceback": "..."}

While a job runs, what the plan reports (:meth:`TrainingPlan.report_progress`) goes out on the
same pipe as ``{"progress": {"iteration": 3.0, "loss": 0.4}}`` frames, at most one every
:data:`PROGRESS_INTERVAL` seconds (the latest values win), the last one before the result.

The plan's class is loaded and built once per worker: later jobs of the same plan reuse the
same instance (``init_model`` is called again every round). The plan's exceptions become
failure results; the worker ends when its input ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import traceback
import types
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from broker_net.codec import decode, encode
from node_agent._confine import confine, fail
from node_agent.plan_process import read_frame, write_frame
from training_plans.corrections import check_supported
from training_plans.plan import TrainingPlan
from training_plans.progress import set_progress_sink

_T = TypeVar("_T")
_MESSAGE_LIMIT = 500
_TRACEBACK_LIMIT = 8000
PROGRESS_INTERVAL = 0.05
"""Seconds between two progress frames of the worker; reports in between replace each other."""


class _StageError(Exception):
    """A failure in the plan's code, with the stage it happened in."""

    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


def _stage(stage: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except (Exception, SystemExit) as exc:
        raise _StageError(stage, exc) from exc


def load_plan_class(source: str, class_name: str) -> type[TrainingPlan]:
    """Execute ``source`` in a fresh module and return its TrainingPlan subclass ``class_name``.

    Raises:
        TypeError: the module has no such class, or it is not a TrainingPlan subclass.
        Exception: whatever the plan's module code raises.
    """
    name = f"training_plan_{uuid.uuid4().hex}"
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, "<training plan>", "exec"), module.__dict__)
    cls = module.__dict__.get(class_name)
    if not (isinstance(cls, type) and issubclass(cls, TrainingPlan)):
        raise TypeError(f"the plan defines no TrainingPlan subclass named {class_name!r}")
    return cls


def split_rows(n_rows: int, fraction: float, seed: int, *, training: bool) -> tuple[Any, Any]:
    """Return the (train, validation) row indices of a seeded random split.

    At least one row is kept for training when training.
    """
    order = np.random.default_rng(seed).permutation(n_rows)
    n_validation = min(max(0, round(n_rows * fraction)), n_rows - 1 if training else n_rows)
    return order[n_validation:], order[:n_validation]


class PlanCache:
    """The plan instance a worker keeps between jobs of the same source and class."""

    def __init__(self) -> None:
        self.key: tuple[str, str] | None = None
        self.plan: TrainingPlan | None = None

    def get(self, source: str, class_name: str) -> TrainingPlan:
        """The instance for this plan: loaded and built on first use, then the same one."""
        if self.plan is None or self.key != (source, class_name):
            self.key, self.plan = None, None
            cls = _stage("load", lambda: load_plan_class(source, class_name))
            self.plan = _stage("init", cls)
            self.key = (source, class_name)
        return self.plan


def run_job(job: dict[str, Any], cache: PlanCache | None = None) -> dict[str, Any]:
    """Run one training, validation or prediction job; failures of the plan's code become
    failure results."""
    try:
        run = _predict if job.get("task") == "predict" else _run
        return run(job, cache or PlanCache())
    except _StageError as exc:
        error = exc.error
        return {
            "ok": False,
            "stage": exc.stage,
            "error_type": type(error).__name__,
            "message": str(error)[:_MESSAGE_LIMIT],
            "traceback": "".join(traceback.format_exception(error))[-_TRACEBACK_LIMIT:],
        }


def _loaded_plan(job: dict[str, Any], cache: PlanCache, *, n_features: int) -> TrainingPlan:
    """The job's plan, its model made from ``model_args`` and set to the job's parameters."""
    model_args = {"n_features": n_features, **job["model_args"]}
    plan = cache.get(job["source"], job["class_name"])
    _stage("init", lambda: plan.init_model(model_args))
    params = {name: np.array(value) for name, value in job["params"].items()}
    if params:
        _stage("set_params", lambda: plan.set_params(params))
    return plan


def _run(job: dict[str, Any], cache: PlanCache) -> dict[str, Any]:
    columns: list[str] = list(job["columns"])
    values = np.array(job["values"], dtype=np.float64)
    target = columns.index(job["target"])
    x = np.delete(values, target, axis=1)
    y = values[:, target]
    training = bool(job["training"])
    train, validation = split_rows(
        len(y), float(job["validation_fraction"]), int(job["split_seed"]), training=training
    )
    plan = _loaded_plan(job, cache, n_features=x.shape[1])
    aux_var = dict(job.get("aux_var") or {})
    if aux_var:
        _stage("set_aux_var", lambda: plan.set_aux_var(aux_var))
    metrics: dict[str, float] = {}
    timing: dict[str, float] = {}
    if training:
        supports = frozenset(getattr(plan, "supports", ()))
        _stage("train", lambda: check_supported(supports, job["training_args"], aux_var))
        wall, cpu = time.perf_counter(), time.process_time()
        train_metrics = _stage(
            "train", lambda: plan.train(x[train], y[train], job["training_args"])
        )
        timing = {
            "rtime_training": time.perf_counter() - wall,
            "ptime_training": time.process_time() - cpu,
        }
        metrics.update({f"train_{k}": v for k, v in _floats("train", train_metrics).items()})
    if len(validation):
        scores = _stage("evaluate", lambda: plan.evaluate(x[validation], y[validation]))
        metrics.update(_floats("evaluate", scores))
    new_params = _stage("get_params", plan.get_params)
    new_aux_var = _stage("get_aux_var", plan.get_aux_var)
    if not isinstance(new_aux_var, dict):
        raise _StageError("get_aux_var", TypeError("auxiliary variables must be a dict"))
    _stage("get_aux_var", lambda: encode(new_aux_var))  # arrays, numbers, strings: nothing else
    return {
        "ok": True,
        "params": _arrays(new_params),
        "aux_var": new_aux_var,
        "sample_size": int(len(train) if training else len(validation)),
        "metrics": metrics,
        "timing": timing,
    }


def _predict(job: dict[str, Any], cache: PlanCache) -> dict[str, Any]:
    x = np.array(job["values"], dtype=np.float64)
    plan = _loaded_plan(job, cache, n_features=x.shape[1])
    predictions = _stage("predict", lambda: np.asarray(plan.predict(x), dtype=np.float64))
    if predictions.shape != (len(x),):
        error = ValueError(f"predict gave shape {predictions.shape}, not one value per row")
        raise _StageError("predict", error)
    classifier = bool(_stage("predict", plan.is_classifier))
    return {"ok": True, "predictions": predictions, "classifier": classifier}


def _floats(stage: str, metrics: Any) -> dict[str, float]:
    try:
        return {str(name): float(value) for name, value in dict(metrics or {}).items()}
    except (TypeError, ValueError) as exc:
        raise _StageError(stage, TypeError(f"metrics must map names to numbers: {exc}")) from exc


def _arrays(params: Any) -> dict[str, npt.NDArray[Any]]:
    try:
        arrays = {str(name): np.asarray(value) for name, value in dict(params).items()}
    except (TypeError, ValueError) as exc:
        raise _StageError("get_params", TypeError(f"params must be a mapping: {exc}")) from exc
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            error = TypeError(f"parameter {name!r} is not a numeric array ({array.dtype})")
            raise _StageError("get_params", error)
    return arrays


class ProgressFrames:
    """Writes the plan's progress reports to the result pipe, throttled, the latest values
    winning; frames from the plan's threads and the result never interleave."""

    def __init__(self, fd: int, interval: float = PROGRESS_INTERVAL) -> None:
        self._fd = fd
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: dict[str, float] | None = None
        self._last = -interval

    def due(self) -> bool:
        """Whether a report now would be written at once."""
        return time.monotonic() - self._last >= self._interval

    def report(self, values: dict[str, float]) -> None:
        """Take one report: written now, or kept (replacing the one kept) until its turn."""
        with self._lock:
            if not self.due():
                self._pending = values
                return
            self._pending = None
            self._write_progress(values)

    def flush(self) -> None:
        """Write the report kept back, if any."""
        with self._lock:
            if self._pending is not None:
                values, self._pending = self._pending, None
                self._write_progress(values)

    def write(self, payload: bytes) -> None:
        """Write a result frame."""
        with self._lock:
            write_frame(self._fd, payload)

    def _write_progress(self, values: dict[str, float]) -> None:
        self._last = time.monotonic()
        write_frame(self._fd, encode({"progress": values}))


def serve(jobs: int, results: int) -> int:
    """Answer every job frame read from ``jobs`` with a result frame on ``results``, after
    the progress frames of the job."""
    cache = PlanCache()
    progress = ProgressFrames(results)
    set_progress_sink(progress)
    while (frame := read_frame(jobs, sys.maxsize)) is not None:
        result = run_job(decode(frame), cache)
        progress.flush()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        progress.write(encode(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Confine this process as the spec ``argv[1]`` says, then serve jobs; the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--serve":
        print("usage: python -m node_agent._plan_worker --serve SPEC", file=sys.stderr)
        return 2
    try:
        jobs, results = confine(json.loads(args[1]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(str(exc))
    return serve(jobs, results)


if __name__ == "__main__":
    # os._exit: threads a plan started must not keep the worker alive once its input ended.
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
