"""Store-time checks of a model's signature."""

from __future__ import annotations

from inferis.client.protocol.models import TensorSpec
from inferis.engine.models.introspect import unbatchable_inputs


def test_an_input_without_a_batch_dimension_is_named() -> None:
    specs = [TensorSpec("txn", "float32", (None, 30)), TensorSpec("ref", "float32", (256,))]
    assert unbatchable_inputs(specs) == ["input ref has no batch dimension ([256])"]
    assert unbatchable_inputs([TensorSpec("x", "float32", (None, 4))]) == []
    assert unbatchable_inputs([TensorSpec("x", "float32", None)]) == []  # rank unknown
    scalar = [{"name": "s", "shape": []}]
    assert unbatchable_inputs(scalar) == ["input s has no batch dimension ([])"]
