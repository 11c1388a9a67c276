"""Pipelines: several stored models run in sequence on one worker.

A pipeline is itself a stored model (backend ``pipeline``, a JSON blob), so a
chain such as "script -> model -> script" is one MODELRUN: the intermediate
tensors never leave the worker. Each step names a model (and optionally a
version) and maps tensor names in and out::

    {"inputs": ["raw"], "outputs": ["score"],
     "steps": [
       {"model": "prep",  "inputs": ["raw"],          "outputs": ["features"]},
       {"model": "fraud", "inputs": {"X": "features"}, "outputs": {"probabilities": "p"}},
       {"model": "post",  "inputs": ["p"],            "outputs": ["score"]}]}

Step ``inputs``/``outputs`` are either lists (bound by position) or objects
mapping the model's own input/output names to pipeline tensor names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from inferis.client.protocol.errors import ArgumentError, BackendError, InferisError, InputError
from inferis.client.protocol.models import ANY_DTYPE, TensorSpec

if TYPE_CHECKING:
    from .loading import Loaded

PIPELINE_BACKEND = "pipeline"
MAX_STEPS = 32

# (model input or output name, or "" for positional; pipeline tensor name)
Binding = list[tuple[str, str]]
Resolver = Callable[[str, str], "Loaded"]


@dataclass(frozen=True)
class Step:
    model: str
    version: str
    inputs: Binding
    outputs: Binding


@dataclass(frozen=True)
class PipelineSpec:
    inputs: list[str]
    outputs: list[str]
    steps: list[Step]


def _binding(value: Any, where: str) -> Binding:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [("", v) for v in value]
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return list(value.items())
    raise ArgumentError(f"{where} must be a list of names or an object of name: name")


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ArgumentError(f"pipeline {where} must be a non-empty list of names")
    return value


def parse_pipeline(blob: bytes) -> PipelineSpec:
    """Parse and check a pipeline: every tensor is produced before it is used."""
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArgumentError(f"pipeline is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ArgumentError("pipeline must be a JSON object")
    inputs, outputs = _names(doc.get("inputs"), "inputs"), _names(doc.get("outputs"), "outputs")
    raw_steps = doc.get("steps")
    if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= MAX_STEPS:
        raise ArgumentError(f"pipeline steps must be a list of 1 to {MAX_STEPS} steps")
    known = set(inputs)
    steps = []
    for number, raw in enumerate(raw_steps, start=1):
        where = f"pipeline step {number}"
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), str):
            raise ArgumentError(f"{where} needs a model name")
        step = Step(
            model=raw["model"],
            version=str(raw.get("version", "")),
            inputs=_binding(raw.get("inputs", []), f"{where} inputs"),
            outputs=_binding(raw.get("outputs", []), f"{where} outputs"),
        )
        missing = [t for _, t in step.inputs if t not in known]
        if missing:
            raise ArgumentError(f"{where} uses {missing[0]!r} before any step produces it")
        if not step.outputs:
            raise ArgumentError(f"{where} produces nothing")
        known.update(t for _, t in step.outputs)
        steps.append(step)
    missing = [t for t in outputs if t not in known]
    if missing:
        raise ArgumentError(f"pipeline output {missing[0]!r} is produced by no step")
    return PipelineSpec(inputs, outputs, steps)


class PipelineModel:
    """Runs the steps through the worker's model cache."""

    def __init__(self, name: str, spec: PipelineSpec, resolve: Resolver) -> None:
        self.name = name
        self.spec = spec
        self._resolve = resolve
        self.inputs = [TensorSpec(n, ANY_DTYPE, None) for n in spec.inputs]
        self.outputs = [TensorSpec(n, ANY_DTYPE, None) for n in spec.outputs]
        self.device = "CPU"  # its steps run where they run

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(feed)
        for number, step in enumerate(self.spec.steps, start=1):
            try:
                self._run_step(step, tensors)
            except InferisError as exc:
                raise type(exc)(
                    f"pipeline {self.name} step {number} ({step.model}): {exc.message}"
                ) from None
        return {name: tensors[name] for name in self.spec.outputs}

    def _run_step(self, step: Step, tensors: dict[str, np.ndarray]) -> None:
        loaded = self._resolve(step.model, step.version)
        model = loaded.model
        if loaded.info.backend == PIPELINE_BACKEND:
            raise InputError("a pipeline step cannot be another pipeline")
        named = [(name, tensors[tensor]) for name, tensor in step.inputs]
        feed = loaded.signature.bind(named)
        try:
            produced = model.run(feed)
        except InferisError:
            raise
        except Exception as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from None
        order = [s.name for s in model.outputs] or list(produced)
        for position, (name, tensor) in enumerate(step.outputs):
            source = name or (order[position] if position < len(order) else "")
            if source not in produced:
                raise InputError(f"model has no output {source or position!r}; has {order}")
            tensors[tensor] = produced[source]

    def close(self) -> None:
        self._resolve = None  # type: ignore[assignment]
