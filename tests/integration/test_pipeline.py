"""Pipelines: stored models chained on the worker in one MODELRUN."""

from __future__ import annotations

import numpy as np
import pytest

from inferis.client import ArgumentError, Client, InputError

from .. import models


@pytest.fixture
def chain(client: Client) -> Client:
    client.modelstore("double", "onnx", models.scale_model(2.0))
    client.modelstore("triple", "onnx", models.scale_model(3.0))
    client.modelstore("pair", "onnx", models.two_input_model())
    return client


def test_a_chain_runs_in_one_request(chain: Client, workers) -> None:
    chain.pipelinestore(
        "six",
        [
            {"model": "double", "inputs": ["x"], "outputs": ["twice"]},
            {"model": "triple", "version": 1, "inputs": {"X": "twice"}, "outputs": {"Y": "six"}},
        ],
        inputs=["x"], outputs=["six", "twice"],
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = chain.predict("six", {"x": x})
    assert np.array_equal(out["six"], x * 6) and np.array_equal(out["twice"], x * 2)
    assert chain.modelget("six").backend == "pipeline"


def test_named_outputs_and_two_input_steps(chain: Client, workers) -> None:
    chain.pipelinestore(
        "sum-then-product",
        [
            {"model": "pair", "inputs": ["a", "b"], "outputs": {"S": "s", "P": "p"}},
            {"model": "pair", "inputs": {"A": "s", "B": "p"}, "outputs": ["s2", "p2"]},
        ],
        inputs=["a", "b"], outputs=["s2", "p2"],
    )
    a, b = np.full((1, 2), 2.0), np.full((1, 2), 5.0)
    out = chain.predict("sum-then-product", [a, b])
    assert out["s2"].tolist() == [[17.0, 17.0]] and out["p2"].tolist() == [[70.0, 70.0]]


def test_step_errors_name_the_step(chain: Client, workers) -> None:
    chain.pipelinestore(
        "mismatch",
        [
            {"model": "double", "inputs": ["x"], "outputs": ["y"]},
            {"model": "pair", "inputs": ["y", "y"], "outputs": ["s"]},  # pair wants float64
        ],
        inputs=["x"], outputs=["s"],
    )
    with pytest.raises(InputError, match=r"pipeline mismatch step 2 \(pair\): input A"):
        chain.predict("mismatch", [np.ones((1, 3), np.float32)])
    chain.pipelinestore(
        "nested", [{"model": "mismatch", "inputs": ["x"], "outputs": ["s"]}],
        inputs=["x"], outputs=["s"],
    )
    with pytest.raises(InputError, match="cannot be another pipeline"):
        chain.predict("nested", [np.ones((1, 3), np.float32)])
    # the worker still serves ordinary requests
    assert chain.predict("double", [np.ones((1, 3), np.float32)])["Y"].tolist() == [[2.0] * 3]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"model": "double", "inputs": ["nope"], "outputs": ["y"]}], "uses 'nope' before"),
        ([{"model": "double", "inputs": ["x"], "outputs": ["z"]}], "output 'y' is produced by no"),
        ([{"inputs": ["x"], "outputs": ["y"]}], "step 1 needs a model name"),
        ([{"model": "double", "inputs": "x", "outputs": ["y"]}], "inputs must be a list"),
        ([], "steps must be a list of 1 to"),
    ],
)
def test_malformed_pipelines_are_refused(
    chain: Client, workers, steps: list, message: str
) -> None:
    chain.pipelinestore("broken", steps, inputs=["x"], outputs=["y"])
    with pytest.raises(ArgumentError, match=message):
        chain.predict("broken", [np.ones((1, 3), np.float32)])
