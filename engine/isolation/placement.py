"""Where each model runs: in the worker's process, or in the sandboxed backend process.

TorchScript and TensorFlow graphs (and pickles, when a worker trusts them) are
programs that can reach files and the network, so by default they run in the
backend child, confined by :mod:`.sandbox` where the kernel allows it. ONNX
graphs and skops files carry no such ops and stay in the worker, on the fast
path, unless ``--isolate-backends`` sends every model to the child.
"""

from __future__ import annotations

import logging

from inferis.client.protocol.models import ModelInfo

from ..backends.base import BackendOptions
from ..backends.registry import executes_model_code
from ..config import ConfigError
from .runner import IsolatedRunner
from .sandbox import landlock_abi

log = logging.getLogger(__name__)

SANDBOX_MODES = ("auto", "on", "off")


class Placement:
    def __init__(
        self,
        options: BackendOptions,
        *,
        isolate_all: bool = False,
        sandbox: str = "auto",
        run_timeout_ms: int = 30_000,
    ) -> None:
        if sandbox not in SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, not {sandbox!r}")
        self._options = options
        self._isolate_all = isolate_all
        abi = landlock_abi() if sandbox != "off" else 0
        if sandbox == "on" and abi < 1:
            raise ConfigError(
                "--sandbox on: this kernel offers no Landlock (Linux 5.13+ with the landlock "
                "LSM enabled), so models cannot be confined; use --sandbox auto to run them "
                "unconfined"
            )
        self.confined = abi >= 1
        self.landlock_abi = abi
        if sandbox == "auto" and not self.confined:
            log.warning(
                "this kernel offers no Landlock: TorchScript and TensorFlow models will run "
                "unconfined (they can read files the worker can); see docs/SECURITY.md"
            )
        needs_child = isolate_all or self.confined
        self._runner = (
            IsolatedRunner(options, run_timeout_ms, sandbox=self.confined)
            if needs_child else None
        )

    def runner_for(self, info: ModelInfo) -> IsolatedRunner | None:
        """The backend process ``info`` runs in, or None for this process."""
        if self._runner is None:
            return None
        if self._isolate_all or executes_model_code(info.backend, self._options):
            return self._runner
        return None

    def describe(self) -> str:
        if self._runner is None:
            return "every model in the worker process (unconfined)"
        where = "every model" if self._isolate_all else "TorchScript and TensorFlow models"
        how = f"confined (Landlock ABI {self.landlock_abi})" if self.confined else "unconfined"
        return f"{where} in a backend process, {how}"

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
