"""Imputation and standardisation through FIT / APPLY steps chained by state ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker_net.codes import PreprocStep, PreprocType
from broker_net.messages import PreprocRequest
from node_agent.datasets import DatasetRegistry
from node_agent.preprocessing import PreprocessingError, load_training_table, run_preprocessing
from node_agent.state import NodeStateStore, StateNotFoundError

RAW = np.array(
    [[1.0, 10.0, 0.0], [np.nan, 20.0, 1.0], [3.0, np.nan, 1.0], [np.nan, 40.0, 0.0]],
)
FILL = {"a": 2.0, "b": 25.0}
MEAN = {"a": 2.0, "b": 25.0}
STD = {"a": 0.5, "b": 10.0}


@pytest.fixture
def node(tmp_path: Path):
    np.savez(tmp_path / "d.npz", X=RAW[:, :2], y=RAW[:, 2], columns=np.array(["a", "b"]))
    datasets = DatasetRegistry(tmp_path / "node")
    states = NodeStateStore(tmp_path / "node")
    dataset_id = datasets.add(tmp_path / "d.npz").dataset_id
    yield datasets, states, dataset_id
    datasets.close()
    states.close()


def preproc(dataset_id, kind, step, state_id=None, **args) -> PreprocRequest:
    return PreprocRequest(
        researcher_id="r",
        experiment_id="e",
        dataset_id=dataset_id,
        preproc_type=kind,
        preproc_step=step,
        preproc_id=f"{kind.value}-{step.value}",
        preproc_args=args,
        state_id=state_id,
    )


def imputed() -> np.ndarray:
    expected = RAW.copy()
    expected[np.isnan(expected[:, 0]), 0] = FILL["a"]
    expected[np.isnan(expected[:, 1]), 1] = FILL["b"]
    return expected


def test_impute_fit_then_apply(node):
    datasets, states, dataset_id = node
    fit = run_preprocessing(
        preproc(dataset_id, PreprocType.IMPUTE, PreprocStep.FIT, fill_values=FILL, strategy="mean"),
        datasets,
        states,
    )
    assert fit.output == {"step": "fit", "columns": ["a", "b"], "steps": 1}

    applied = run_preprocessing(
        preproc(dataset_id, PreprocType.IMPUTE, PreprocStep.APPLY, fit.state_id), datasets, states
    )
    assert applied.state_id == fit.state_id
    assert applied.output["filled"] == {"a": 2, "b": 1}
    assert applied.output["rows"] == 4

    table = load_training_table(datasets, states, dataset_id, fit.state_id)
    assert table.columns == ["a", "b", "y"]
    np.testing.assert_array_equal(table.values, imputed())
    np.testing.assert_array_equal(
        load_training_table(datasets, states, dataset_id, None).values, RAW
    )


def test_impute_then_standardize_compose_and_survive_reopening(node, tmp_path):
    datasets, states, dataset_id = node
    impute = run_preprocessing(
        preproc(dataset_id, PreprocType.IMPUTE, PreprocStep.FIT, fill_values=FILL), datasets, states
    )
    run_preprocessing(
        preproc(dataset_id, PreprocType.IMPUTE, PreprocStep.APPLY, impute.state_id),
        datasets,
        states,
    )
    scale = run_preprocessing(
        preproc(
            dataset_id,
            PreprocType.STANDARDIZE,
            PreprocStep.FIT,
            impute.state_id,
            mean=MEAN,
            std=STD,
        ),
        datasets,
        states,
    )
    assert scale.state_id != impute.state_id
    assert scale.output["steps"] == 2
    expected = imputed()
    expected[:, 0] = (expected[:, 0] - MEAN["a"]) / STD["a"]
    expected[:, 1] = (expected[:, 1] - MEAN["b"]) / STD["b"]

    # Fitted but not applied: the steps run on the fly.
    on_the_fly = load_training_table(datasets, states, dataset_id, scale.state_id)
    np.testing.assert_allclose(on_the_fly.values, expected, rtol=1e-15)

    run_preprocessing(
        preproc(dataset_id, PreprocType.STANDARDIZE, PreprocStep.APPLY, scale.state_id),
        datasets,
        states,
    )
    datasets.close()
    states.close()

    with (
        DatasetRegistry(tmp_path / "node") as datasets2,
        NodeStateStore(tmp_path / "node") as states2,
    ):
        assert "table" in states2.load(scale.state_id)
        stored = load_training_table(datasets2, states2, dataset_id, scale.state_id)
        np.testing.assert_allclose(stored.values, expected, rtol=1e-15)
        earlier = load_training_table(datasets2, states2, dataset_id, impute.state_id)
        np.testing.assert_array_equal(earlier.values, imputed())
        stored.values[0, 0] = 99.0  # the caller may write to what it loaded


@pytest.mark.parametrize(
    ("kind", "step", "args", "match"),
    [
        (PreprocType.IMPUTE, PreprocStep.FIT, {}, "fill_values"),
        (PreprocType.IMPUTE, PreprocStep.FIT, {"fill_values": {"zz": 1}}, "unknown"),
        (PreprocType.IMPUTE, PreprocStep.FIT, {"fill_values": {"a": "x"}}, "numbers"),
        (PreprocType.IMPUTE, PreprocStep.FIT, {"fill_values": {"a": float("nan")}}, "finite"),
        (PreprocType.STANDARDIZE, PreprocStep.FIT, {"mean": MEAN, "std": {"a": 1}}, "same"),
        (PreprocType.STANDARDIZE, PreprocStep.FIT, {"mean": MEAN, "std": {"a": 1, "b": 0}}, "b"),
        (PreprocType.IMPUTE, PreprocStep.APPLY, {}, "state_id"),
    ],
)
def test_bad_arguments_are_refused(node, kind, step, args, match):
    datasets, states, dataset_id = node
    with pytest.raises(PreprocessingError, match=match):
        run_preprocessing(preproc(dataset_id, kind, step, **args), datasets, states)


def test_states_are_checked_against_type_and_dataset(node, tmp_path):
    datasets, states, dataset_id = node
    fit = run_preprocessing(
        preproc(dataset_id, PreprocType.IMPUTE, PreprocStep.FIT, fill_values=FILL), datasets, states
    )
    with pytest.raises(PreprocessingError, match="fitted for 'impute'"):
        run_preprocessing(
            preproc(dataset_id, PreprocType.STANDARDIZE, PreprocStep.APPLY, fit.state_id),
            datasets,
            states,
        )
    other = datasets.add(tmp_path / "d.npz").dataset_id
    with pytest.raises(PreprocessingError, match="another dataset"):
        load_training_table(datasets, states, other, fit.state_id)
    with pytest.raises(StateNotFoundError):
        load_training_table(datasets, states, dataset_id, "state_unknown")
    foreign = states.new_state_id()
    with pytest.raises(PreprocessingError, match="not a preprocessing state"):
        load_training_table(datasets, states, dataset_id, foreign)
