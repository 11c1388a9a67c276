"""Shared by the HTTP systems: JSON bodies prepared ahead, one aiohttp session per point."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ..loadgen import Caller
from ..procs import ServerProcess
from ..venvs import Venv, VenvError, ensure_venv
from ..workloads import Workload
from .base import RunConfig, Series, Target, TargetUnavailable


class HttpError(RuntimeError):
    pass


class HttpTarget(Target):
    """A server subprocess answering JSON over HTTP; subclasses say how to talk to it."""

    def __init__(self, name: str, note: str) -> None:
        super().__init__(name=name, note=note)
        self.server: ServerProcess | None = None
        self.base_url = ""
        self._bodies: dict[str, list[bytes]] = {}
        self._session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------ per engine

    def path(self, workload: Workload) -> str:
        raise NotImplementedError

    def body(self, workload: Workload, inputs: dict[str, np.ndarray]) -> Any:
        raise NotImplementedError

    def decode(self, workload: Workload, doc: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def launch(self, workloads: list[Workload], config: RunConfig) -> None:
        """Start ``self.server`` and set ``self.base_url``; return once it answers."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared

    async def start(self, workloads: list[Workload], config: RunConfig) -> None:
        # Encoded once: the load generator should spend its time on the wire.
        self._bodies = {
            w.name: [json.dumps(self.body(w, r)).encode() for r in w.requests] for w in workloads
        }
        await self.launch(workloads, config)

    def series(self, workload: Workload) -> list[Series]:
        url = self.base_url + self.path(workload)
        bodies = self._bodies[workload.name]
        headers = {"Content-Type": "application/json"}

        async def open_(concurrency: int) -> Caller:
            # One session, as many connections as requests in flight.
            connector = aiohttp.TCPConnector(limit=concurrency)
            self._session = session = aiohttp.ClientSession(connector=connector)

            async def call(i: int) -> object:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    payload = await r.read()
                    if r.status != 200:
                        raise HttpError(f"HTTP {r.status}: {payload[:200]!r}")
                return json.loads(payload)

            return call

        return [Series(self.label, open_, self._close_session)]

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def answer(self, workload: Workload, index: int) -> dict[str, np.ndarray] | None:
        url = self.base_url + self.path(workload)
        async with aiohttp.ClientSession() as session, session.post(
            url, data=self._bodies[workload.name][index],
            headers={"Content-Type": "application/json"},
        ) as resp:
            payload = await resp.read()
            if resp.status != 200:
                raise HttpError(f"HTTP {resp.status}: {payload[:300]!r}")
        return self.decode(workload, json.loads(payload))

    async def stop(self) -> None:
        await self._close_session()
        if self.server is not None:
            self.server.stop()
            self.server = None


SERVERS = Path(__file__).resolve().parent.parent / "servers"


def server_env(config_path: Path) -> dict[str, str]:
    """What every server script needs: its config, and the shared ``onnx_session``."""
    return {"BENCH_CONFIG": str(config_path), "PYTHONPATH": str(SERVERS)}


def write_server_config(
    folder: Path, workloads: list[Workload], config: RunConfig, **extra: Any
) -> Path:
    """What the server scripts read: models, batching, and this variant's settings."""
    folder.mkdir(parents=True, exist_ok=True)
    size, wait_ms = config.engine_batch
    doc = {
        "models": model_specs(workloads, folder),
        "workers": config.workers,
        "max_batch": size,
        "wait_ms": wait_ms,
        **extra,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


async def engine_venv(name: str) -> Venv:
    """The engine's own virtualenv (installed on first use); unavailable if that fails."""
    try:
        return await asyncio.to_thread(ensure_venv, name)
    except VenvError as exc:
        raise TargetUnavailable(f"cannot install {name}: {exc}") from None


def model_specs(workloads: list[Workload], folder: Path) -> list[dict[str, Any]]:
    """What the server-side scripts need to know about each model (written as JSON)."""
    specs = []
    for w in workloads:
        first = w.requests[0]
        specs.append({
            "name": w.name,
            "path": str(w.write(folder).resolve()),
            "inputs": [{"name": n, "shape": list(first[n].shape[1:])} for n in w.input_names],
            "outputs": list(w.output_names),
            "primary": w.primary_output,
        })
    return specs
