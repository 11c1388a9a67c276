"""WorkerConfig: the one source of a worker's settings, their defaults, flags and help.

``inferis worker`` and ``inferis up`` build their options from these fields,
and ``up`` hands them on to each worker process with :func:`worker_argv`, so a
new setting is written here once.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .backends.base import BackendOptions


def _opt(default: Any, help: str, **argparse_options: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class WorkerConfig:
    redis_url: str = field(default="redis://localhost:6379", metadata={"cli": False})
    consumer: str = field(default="", metadata={"cli": False})
    partitions: str = _opt(
        "auto", "partitions to serve: auto (0 on one Redis; in a cluster, those whose slots "
        "the shard of the first node of --redis holds, followed as slots move), all, or 0,1,..."
    )
    models: str = _opt(
        "", "serve only the partitions these models are routed to (comma-separated; "
        "inferis model route NAME --partition N): a pool of their own, scaled apart"
    )
    cluster_partitions: int = _opt(
        16, "in a cluster, how many partitions spread over the slots (as the clients' partitions=)"
    )
    region: str = _opt(
        "", "Active-Active: the region this worker serves (a name in inferis:regions); it "
        "reads only that region's partitions (docs/ACTIVE-ACTIVE.md)"
    )
    device: str = _opt("CPU", "device this worker serves (CPU, GPU:0)")
    intra_op_threads: int = _opt(1, "threads per model run (0: the framework's default)")
    inter_op_threads: int = _opt(1, "threads across independent ops of one run")
    read_count: int = _opt(64, "stream entries read per XREADGROUP")
    block_ms: int = _opt(500, "how long one XREADGROUP waits for work")
    read_ahead: int = _opt(
        4096, "requests read and held for their turn, so that models and callers are served "
        "in turn rather than in stream order (1: each read is run before the next)"
    )
    hold_ms: float = _opt(
        1000.0, "and no more read-ahead than would take this long to run (so that workers "
        "added under a burst find work left)"
    )
    slice_ms: float = _opt(
        2.0, "how long held requests run before the finished ones are answered and more is "
        "read"
    )
    claim_idle_ms: int = _opt(30_000, "reclaim requests another worker left pending this long")
    max_deliveries: int = _opt(3, "dead-letter a request delivered more often than this")
    max_models: int = _opt(32, "loaded models kept in memory")
    trust_unsafe_formats: bool = _opt(
        False, "allow model formats that run code on load (pickle)", action="store_true"
    )
    isolate_backends: bool = _opt(
        False, "run models in a child process, so a run past its timeout is cut off",
        action="store_true",
    )
    sandbox: str = _opt(
        "auto", "confine TorchScript and TensorFlow models (every model with "
        "--isolate-backends) in a backend process with no file access beyond its own and no "
        "network: auto (where the kernel has Landlock), on (refuse to start without it), off",
        choices=("auto", "on", "off"),
    )
    run_timeout_ms: int = _opt(
        30_000, "in a backend process: a run's execution timeout unless the model's META "
        "timeout_ms says otherwise",
    )
    backend_option: list[str] = field(default_factory=list, metadata={
        "help": "backend option KEY=VALUE, e.g. skops_trusted=pkg.Class,pkg.func (repeatable)",
        "action": "append", "metavar": "KEY=VALUE",
    })
    max_unpacked_mb: int = _opt(
        4096, "refuse a model archive that unpacks to more (also bounded by 200x its size)"
    )
    max_archive_entries: int = _opt(100_000, "refuse a model archive with more entries")
    trusted_keys: str = _opt(
        "", "PEM file of ed25519 public keys: signed models must be signed by one of them"
    )
    require_signatures: bool = _opt(
        False, "refuse models that are not signed by a trusted key", action="store_true"
    )
    model_key_file: str = _opt(
        "", "32-byte envelope key file(s), comma-separated: decrypt models encrypted at rest "
        "(inferis keys generate --encryption); without their key a model is refused"
    )
    drift_window_s: int = _opt(
        60, "length of the time windows drift histograms are kept in (seconds)"
    )
    metrics_addr: str = _opt("127.0.0.1", "address the /metrics endpoint listens on")
    metrics_port: int = _opt(
        0, "serve Prometheus /metrics on this port (0: off); with up/demo, worker i uses port + i"
    )

    def backend_options(self) -> BackendOptions:
        return BackendOptions(
            device=self.device,
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            trust_unsafe_formats=self.trust_unsafe_formats,
            extra=_pairs(self.backend_option),
            max_unpacked_bytes=self.max_unpacked_mb * 1024 * 1024,
            max_archive_entries=self.max_archive_entries,
            trusted_keys=self._trusted_keys(),
            require_signatures=self.require_signatures,
            model_keys=self._model_keys(),
        )

    def _model_keys(self) -> dict[str, bytes]:
        if not self.model_key_file:
            return {}
        from inferis.client import encryption
        from inferis.client.protocol.errors import ArgumentError

        try:
            return encryption.load_keys(p for p in self.model_key_file.split(",") if p)
        except ArgumentError as exc:
            raise ConfigError(f"--model-key-file: {exc.message}") from None
        except OSError as exc:
            raise ConfigError(f"--model-key-file: {exc}") from None

    def _trusted_keys(self) -> tuple[bytes, ...]:
        if not self.trusted_keys:
            if self.require_signatures:
                raise ConfigError("--require-signatures needs --trusted-keys FILE")
            return ()
        from inferis.client import signing

        try:
            return tuple(signing.public_keys(self.trusted_keys))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--trusted-keys: {exc}") from None

    @classmethod
    def from_args(cls, ns: argparse.Namespace, **overrides: Any) -> WorkerConfig:
        values = {f.name: getattr(ns, f.name) for f in _cli_fields() if hasattr(ns, f.name)}
        config = cls(**values, **overrides)
        _pairs(config.backend_option)
        return config


def _cli_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(WorkerConfig) if f.metadata.get("cli", True)]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Every WorkerConfig setting as a ``--flag`` with its default and help."""
    for f in _cli_fields():
        options = {k: v for k, v in f.metadata.items() if k != "cli"}
        flag = "--" + f.name.replace("_", "-")
        if options.get("action") in ("store_true", "append"):
            default = [] if options["action"] == "append" else False
            parser.add_argument(flag, default=default, **options)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, **options)


def worker_argv(config: WorkerConfig) -> list[str]:
    """The flags that give a worker process ``config`` (all but URL and consumer)."""
    argv: list[str] = []
    for f in _cli_fields():
        flag, value = "--" + f.name.replace("_", "-"), getattr(config, f.name)
        if f.metadata.get("action") == "store_true":
            argv += [flag] if value else []
        elif f.metadata.get("action") == "append":
            for item in value:
                argv += [flag, str(item)]
        elif f.name != "metrics_port":  # each worker gets a port of its own
            argv += [flag, str(value)]
    return argv


class ConfigError(ValueError):
    """A setting that cannot work; the CLI prints it as one ``error:`` line."""


def _pairs(items: list[str]) -> dict[str, str]:
    bad = [p for p in items if "=" not in p]
    if bad:
        raise ConfigError(f"--backend-option takes KEY=VALUE, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in items)
