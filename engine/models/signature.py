"""Check a request's tensors against a model's signature before the backend runs.

Every mismatch is an InputError that names the input, so the caller learns
exactly what to fix and the backend never sees a malformed feed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inferis.client.protocol.errors import InputError
from inferis.client.protocol.models import ANY_DTYPE, UNSUPPORTED_DTYPE, TensorSpec
from inferis.client.protocol.tensor import wire_dtype


def merge_specs(
    reported: Sequence[TensorSpec], declared: Sequence[TensorSpec]
) -> list[TensorSpec]:
    """What the model says about itself, completed by what was declared at store time.

    A backend that cannot tell a dtype or shape (TorchScript, say) reports
    ANY_DTYPE or None; the declared spec at the same position fills it in.
    """
    given = list(declared)
    if not reported:
        return given
    merged = []
    for i, spec in enumerate(reported):
        extra = given[i] if i < len(given) else None
        if extra is None:
            merged.append(spec)
            continue
        merged.append(
            TensorSpec(
                spec.name,
                extra.dtype if spec.dtype == ANY_DTYPE else spec.dtype,
                extra.shape if spec.shape is None else spec.shape,
            )
        )
    return merged


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


class Signature:
    """What a loaded version takes and returns, with the checks requests get.

    Built once per load. A (name, dtype, shape) that passed its check once is
    remembered, so the common request (the shapes seen a thousand times) binds
    with a few lookups.
    """

    _MAX_REMEMBERED = 4096

    def __init__(self, model: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]):
        self.model = model
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.output_names = [s.name for s in self.outputs]
        self._by_name = {s.name: s for s in self.inputs}
        self._accepted: set[tuple[str, np.dtype, tuple[int, ...]]] = set()

    def bind(self, named: Sequence[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Map (name or "", array) pairs onto the model inputs and validate each."""
        specs, model = self.inputs, self.model
        if len(named) != len(specs):
            raise InputError(
                f"model {model} takes {len(specs)} input(s) ({_names(specs)}), got {len(named)}"
            )
        given = [name for name, _ in named]
        if all(given):
            unknown = [n for n in given if n not in self._by_name]
            if unknown:
                raise InputError(
                    f"model {model} has no input named {unknown[0]!r}; inputs: {_names(specs)}"
                )
            if len(set(given)) != len(given):
                raise InputError(f"input names repeat: {given}")
            pairs = [(self._by_name[n], a) for n, a in named]
        elif any(given):
            raise InputError("name every input or none (positional)")
        else:
            pairs = list(zip(specs, (a for _, a in named), strict=True))
        feed = {}
        accepted = self._accepted
        for spec, array in pairs:
            seen = (spec.name, array.dtype, array.shape)
            if seen not in accepted:
                check_input(spec, array)
                if len(accepted) >= self._MAX_REMEMBERED:
                    accepted.clear()
                accepted.add(seen)
            feed[spec.name] = array
        return feed

    def outputs_for(self, requested: Sequence[str], count: int) -> list[str]:
        """Model output names for the request's output slots.

        ``count == 0``: every output. Otherwise ``count`` slots, named or positional.
        """
        names, model = self.output_names, self.model
        if count == 0:
            return names
        if count > len(names):
            raise InputError(
                f"model {model} has {len(names)} output(s) ({names}), asked for {count}"
            )
        if all(requested) and requested:
            missing = [n for n in requested if n not in names]
            if missing:
                raise InputError(
                    f"model {model} has no output named {missing[0]!r}; outputs: {names}"
                )
            return list(requested)
        if any(requested):
            raise InputError("name every output or none (positional)")
        return names[:count]


def check_input(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    got = wire_dtype(array.dtype)
    if spec.dtype.startswith(UNSUPPORTED_DTYPE):
        raise InputError(
            f"input {spec.name} has non-tensor type {spec.dtype[len(UNSUPPORTED_DTYPE):]}"
        )
    if spec.dtype != ANY_DTYPE and got != spec.dtype:
        raise InputError(f"input {spec.name}: expected dtype {spec.dtype}, got {got}")
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name}: expected rank {len(spec.shape)} ({spec.describe()}), "
                f"got shape {list(array.shape)}"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, array.shape, strict=True)):
            if want is not None and want != have:
                raise InputError(
                    f"input {spec.name}: dimension {axis} must be {want} ({spec.describe()}), "
                    f"got shape {list(array.shape)}"
                )
    return array
