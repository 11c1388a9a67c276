"""What the sync and asyncio clients share: settings, request ids, reply routing,
and the commands each operation sends. Subclasses only do the I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import core
from .core import Command, Inputs, ModelInfo
from .replies import ReplyRouter


class ClientBase:
    def __init__(
        self,
        url: str,
        *,
        partition: int,
        timeout_ms: int,
        ttl_ms: int,
        wait_replicas: int,
        wait_timeout_ms: int,
    ) -> None:
        self.partition = partition
        self.timeout_ms = timeout_ms
        self.ttl_ms = ttl_ms
        # Durability: with wait_replicas > 0 every write is acknowledged only after
        # that many replicas have it (WAIT), so a failover cannot lose it.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._url = url
        self._ids = core.RequestIds()
        self._router = ReplyRouter(self._ids.client_id, [partition])

    def _timeout(self, timeout_ms: int | None) -> int:
        return self.timeout_ms if timeout_ms is None else timeout_ms

    def _predict_command(
        self,
        model: str,
        inputs: Inputs,
        version: int | str | None,
        timeout_ms: int | None,
        keep_keys: bool,
    ) -> tuple[Command, str, int]:
        """(MODELRUN command, request id, timeout) for a run on inline inputs."""
        rid, timeout = self._ids.next(), self._timeout(timeout_ms)
        command = core.build_predict(
            rid=rid,
            partition=self.partition,
            reply_key=self._router.streams[self.partition],
            model=model,
            inputs=inputs,
            version=version,
            timeout_ms=timeout,
            ttl_ms=self.ttl_ms,
            keep_keys=keep_keys,
        )
        return command, rid, timeout

    def _execute_command(
        self,
        model: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        version: int | str | None,
        input_names: Sequence[str] | None,
        output_names: Sequence[str] | None,
        timeout_ms: int | None,
    ) -> tuple[Command, str, int]:
        """(MODELRUN command, request id, timeout) for a run over stored tensor keys."""
        rid, timeout = self._ids.next(), self._timeout(timeout_ms)
        command = core.build_execute(
            rid=rid,
            partition=self.partition,
            reply_key=self._router.streams[self.partition],
            model=model,
            input_keys=inputs,
            output_keys=outputs,
            input_names=input_names,
            output_names=output_names,
            version=version,
            timeout_ms=timeout,
            ttl_ms=self.ttl_ms,
        )
        return command, rid, timeout

    @staticmethod
    def _modelget_command(name: str, version: int | str | None, blob: bool) -> Command:
        args: list[Any] = ["META"]
        if version is not None:
            args += ["VERSION", str(version)]
        if blob:
            args.append("BLOB")
        return Command("MODELGET", [name], args)

    @staticmethod
    def _modelget_result(reply: Any, blob: bool) -> ModelInfo | tuple[ModelInfo, bytes]:
        info, data = core.parse_model_info(reply)
        if not blob:
            return info
        assert data is not None
        core.verify_blob(info, data)
        return info, data

    @staticmethod
    def _modeldel_command(name: str, version: int | str | None) -> Command:
        return Command("MODELDEL", [name], [] if version is None else ["VERSION", str(version)])

    @staticmethod
    def _stats(raw: Mapping[Any, Any]) -> dict[str, int]:
        return {core._text(k): int(v) for k, v in raw.items()}

    def _config_key(self) -> str:
        return core.keys.partition_config(self.partition)
