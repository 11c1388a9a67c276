"""Every public call of the SDK, written once for the sync and the asyncio client.

An operation is a *plan*: a generator that yields the steps it needs and gets
each result sent back, so it performs no I/O itself (as redis-py writes each
command once, with a response callback, for both of its clients). A step is

- a :class:`~inferis.client.protocol.commands.Command` (an FCALL) or a
  :class:`Call` (a plain command): the reply comes back;
- a :class:`Submit`: a run request; its answer (a ``RunResult``) comes back
  once a worker has written it.

``Client`` drives a plan on the calling thread and returns its value;
``AsyncClient`` drives the same plan in a coroutine. They differ only in how
they move bytes (sync.py, aio.py).
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from . import audit, drift, encryption
from .inflight import InFlight, RequestIds
from .protocol import aliases, caching, commands, keys
from .protocol.commands import Command
from .protocol.defaults import (
    AUDIT_MAXLEN,
    CLUSTER_PARTITIONS,
    DEFAULT_TIMEOUT_MS,
    DEFAULT_TTL_MS,
    MAX_CALL_BYTES,
    MAX_CALL_REQUESTS,
    MAX_REGIONS,
    MAX_TIMEOUT_MS,
    MAX_TTL_MS,
    MODEL_ROUTE_TTL_S,
    MODELS_CHANNEL,
    RECONNECT_WINDOW_S,
)
from .protocol.entries import InputSlot, OutputSlot, RunRequest
from .protocol.errors import (
    ArgumentError,
    DigestError,
    InferisError,
    PermissionDeniedError,
    RedisRefusedError,
)
from .protocol.models import ModelInfo, StoredVersion
from .protocol.replies import RunResult, fill_missing, text_map
from .protocol.tensor import decode_tensor, encode_tensor

T = TypeVar("T")
Inputs = Mapping[str, Any] | Sequence[Any]


@dataclass(frozen=True, slots=True)
class Call:
    """A plain Redis command (HGETALL, SCAN, ...), not a Function. In a cluster it
    goes to the node of ``route`` (a key), or to ``node`` (from :class:`Primaries`)."""

    args: tuple[Any, ...]
    writes: bool = False
    route: str | None = None
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Primaries:
    """The step whose result is the primary nodes, by name ("" for a single Redis)."""


@dataclass(frozen=True, slots=True)
class Submit:
    """A run to enqueue; the step's result is its answer."""

    request: RunRequest
    partition: int

    @property
    def coalescable(self) -> bool:
        """Whether it can travel in a MODELRUNMANY with other runs (no keys to write)."""
        r = self.request
        inline_only = all(s.key == "" or s.data is None for s in r.inputs)
        return r.ephemeral and not r.outputs and inline_only


Step = Command | Call | Submit | Primaries
Plan = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Ref:
    """An input already stored in Redis, passed by key instead of by value.

    The key must carry the partition's hash tag (``{inferis:0}:...``) so the
    request stays in one slot.
    """

    key: str


def operation(plan: Callable[..., Plan[T]]) -> Callable[..., Any]:
    """Make a plan a client method: the client's transport performs it."""

    @functools.wraps(plan)
    def method(self: Operations, *args: Any, **kwargs: Any) -> Any:
        return self._perform(plan(self, *args, **kwargs))

    return method


class Operations:
    """The SDK's calls; a subclass supplies ``_perform`` (the transport)."""

    def __init__(
        self,
        *,
        partition: int = 0,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        ttl_ms: int = DEFAULT_TTL_MS,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        reconnect_window_s: float = RECONNECT_WINDOW_S,
        partitions: int | Sequence[int] | None = None,
        cluster: bool = False,
        caller: str = "",
        region: str = "",
    ) -> None:
        _check_int("partition", partition, 0)
        _check_int("timeout_ms", timeout_ms, 1, MAX_TIMEOUT_MS)
        _check_int("ttl_ms", ttl_ms, 0, MAX_TTL_MS)
        if isinstance(reconnect_window_s, bool) or not isinstance(
            reconnect_window_s, int | float
        ) or reconnect_window_s < 0:
            raise ArgumentError(
                f"reconnect_window_s must be a number of seconds, got {reconnect_window_s!r}"
            )
        # How long calls ride over a Redis that restarts or fails over; past it, a run
        # raises OutcomeUnknownError (it may be queued) and other calls ECONN.
        self.reconnect_window_s = float(reconnect_window_s)
        _check_int("wait_replicas", wait_replicas, 0)
        _check_int("wait_timeout_ms", wait_timeout_ms, 0)
        self.partition = partition
        self.timeout_ms = timeout_ms
        self.ttl_ms = ttl_ms
        # Durability: with wait_replicas > 0 every write is acknowledged only after
        # that many replicas have it (WAIT), so a failover cannot lose it.
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.cluster = cluster
        # The partitions runs are spread over: one on a single Redis; in a cluster,
        # CLUSTER_PARTITIONS spread over the slots (so over every primary).
        self.partitions = _partition_list(partitions, partition, cluster, region)
        self.partition = self.partitions[0]
        self._next = 0
        self._spread: list[int] = self.partitions
        self._spread_due = 0.0
        if not isinstance(caller, str) or (caller and not _CALLER.match(caller)):
            raise ArgumentError(f"caller must be 1-32 letters, digits or _, got {caller!r}")
        if not isinstance(region, str) or (region and not keys.is_region_name(region)):
            raise ArgumentError(
                f"region must be a name like eu or us-east (lowercase), got {region!r}")
        # Active-Active: this client's region (docs/ACTIVE-ACTIVE.md). Its runs queue
        # under the region's own partition keys; its stores and alias changes name the
        # region's index in inferis:regions (read once).
        self.region = region
        self._region_number: int | None = None if region else 0
        # model -> (the partition its runs are routed to or None, until when that holds)
        self._model_partitions: dict[str, tuple[int | None, float]] = {}
        self._ids = RequestIds(caller)
        self._inflight = InFlight(self._ids.client_id, region)
        self.caller = caller
        # The ACL user this client's connections authenticate as (they share one URL,
        # so one user): asked once, stated in the audit's `by`.
        self._acl_user: str | None = None

    def _perform(self, plan: Plan[T]) -> Any:
        raise NotImplementedError

    def _node_of(self, key: str) -> str | None:
        """The node serving ``key`` as the transport's slot map says (None: not known
        yet). A single Redis is one node."""
        return ""

    @property
    def in_flight(self) -> int:
        """Runs submitted and not answered yet."""
        return self._inflight.waiting

    @property
    def unmatched_answers(self) -> int:
        """Answers that found no waiter: a second answer to a resent run, or one that
        came after its caller gave up."""
        return self._inflight.unmatched

    # ---------------------------------------------------------------- runs

    def _run_request(
        self,
        model: str,
        inputs: Inputs,
        version: int | str | None,
        timeout_ms: int | None,
        keep_keys: bool,
        unit: str | None = None,
        request_id: str | None = None,
    ) -> Submit:
        """A run on inline inputs (or :class:`Ref` to stored tensors); the model decides
        the outputs. Unless ``keep_keys``, small tensors travel only in the stream
        entry and the reply: a prediction leaves nothing behind."""
        _check_model(model)
        timeout = self._timeout(timeout_ms)
        rid = self._ids.next() if request_id is None else self._own_id(request_id)
        named = _named_inputs(inputs)
        # A run goes where its stored inputs are (one slot), else where the operator
        # routed its model (a pool of its own), else to the next partition.
        refs = [v.key for _, v in named if isinstance(v, Ref)]
        routed = self._model_partitions.get(model, (None, 0.0))[0]
        partition = routed if routed is not None and not refs else self._partition_of_refs(refs)
        base = keys.partition_tag(partition, self.region)
        slots = []
        for position, (name, value) in enumerate(named):
            if isinstance(value, Ref):
                slots.append(InputSlot(name, value.key))
                continue
            data = value if isinstance(value, bytes) else _encode_input(name, position, value)
            key = keys.request_key(base, rid, f"in:{position}") if keep_keys else ""
            slots.append(InputSlot(name, key, data))
        request = RunRequest(
            rid, model, _version(version), timeout, self.ttl_ms, not keep_keys, slots,
            unit=_unit(unit),
        )
        return Submit(request, partition)

    def _execute_request(
        self,
        model: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        version: int | str | None,
        input_names: Sequence[str] | None,
        output_names: Sequence[str] | None,
        timeout_ms: int | None,
    ) -> Submit:
        """A run over stored tensor keys, writing named output keys (RedisAI's MODELEXECUTE)."""
        _check_model(model)
        in_keys = _key_list("inputs", inputs)
        out_keys = _key_list("outputs", outputs)
        in_names = _names("input_names", input_names, len(in_keys))
        out_names = _names("output_names", output_names, len(out_keys))
        partition = self._partition_of_refs([*in_keys, *out_keys])
        ins = [InputSlot(n, k) for n, k in zip(in_names, in_keys, strict=True)]
        outs = [OutputSlot(n, k) for n, k in zip(out_names, out_keys, strict=True)]
        request = RunRequest(
            self._ids.next(), model, _version(version), self._timeout(timeout_ms), self.ttl_ms,
            False, ins, outs,
        )
        return Submit(request, partition)

    def _answer(self, submit: Submit) -> Plan[RunResult]:
        """Submit a run and complete its answer (outputs too large to travel inline)."""
        result: RunResult = yield submit
        if result.missing and result.error is None:
            values = yield Call(("MGET", *[result.output_keys[n] for n in result.missing]))
            fill_missing(result, values)
        return result

    @operation
    def run(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
        unit: str | None = None,
        request_id: str | None = None,
    ) -> Plan[RunResult]:
        """Run ``model``; the result carries its outputs, or its error in ``result.error``.

        ``version``: a number, a digest, ``"latest"`` or an alias. ``keep_keys``: also
        keep the inputs and outputs as keys (for the client's TTL). ``unit``: who the
        request is for (a user id), so a split alias sends the same unit to the same
        version. ``request_id``: the id to run under (feedback joins on it; unique
        among this client's runs in flight), instead of a generated one.
        """
        yield from self._learn_partition(model)
        submit = self._run_request(model, inputs, version, timeout_ms, keep_keys, unit,
                                   request_id)
        return (yield from self._answer(submit))

    @operation
    def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        version: int | str | None = None,
        timeout_ms: int | None = None,
        keep_keys: bool = False,
        unit: str | None = None,
    ) -> Plan[dict[str, np.ndarray]]:
        """One call: inputs in, output arrays by name out; errors raise (``unit``: as
        for :meth:`run`)."""
        yield from self._learn_partition(model)
        submit = self._run_request(model, inputs, version, timeout_ms, keep_keys, unit)
        result = yield from self._answer(submit)
        return result.raise_for_error().outputs

    @operation
    def modelexecute(
        self,
        key: str,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        version: int | str | None = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        timeout_ms: int | None = None,
    ) -> Plan[RunResult]:
        """Run model ``key`` on stored tensor keys, writing the ``outputs`` keys; errors raise."""
        submit = self._execute_request(
            key, inputs, outputs, version, input_names, output_names, timeout_ms
        )
        result = yield from self._answer(submit)
        return result.raise_for_error()

    # ---------------------------------------------------------------- tensors

    @operation
    def tensorset(self, key: str, tensor: Any) -> Plan[None]:
        """Store an array (any array-like of a supported dtype) at ``key``."""
        yield commands.tensorset(_key("key", key), _encode_input("", 0, tensor, what="tensor"))

    @operation
    def tensorget(self, key: str) -> Plan[np.ndarray]:
        return decode_tensor((yield commands.tensorget(_key("key", key))))

    # ---------------------------------------------------------------- models

    @operation
    def modelstore(
        self, name: str, backend: str, data: bytes, **options: Any
    ) -> Plan[StoredVersion]:
        """Store a new immutable version; identical content returns the existing one.

        Options: ``device``, ``format``, ``inputs``/``outputs`` (specs), ``batch``
        (``(max_batch_size, max_queue_delay_us[, preferred sizes])``), ``tags``, ``extra``,
        ``progress(sent_bytes, total_bytes)``, called as chunks are uploaded,
        ``signing_key`` (sign it, client/signing.py), ``encryption_key`` (store it
        encrypted, client/encryption.py) and ``by`` (the caller id in the audit).
        """
        if not isinstance(backend, str) or not backend:
            raise ArgumentError(f"backend must be a name such as 'onnx', got {backend!r}")
        options["by"] = yield from self._stated_by(options.pop("by", ""), name)
        options["region"] = yield from self._region_index()
        progress = options.pop("progress", None)
        if progress is not None and not callable(progress):
            raise ArgumentError("progress must be a callable taking (sent_bytes, total_bytes)")
        reply: Any = None
        sent, total = 0, len(data) if isinstance(data, bytes | bytearray) else 0
        for command in commands.modelstore(name, backend, data, **options):
            reply = yield command
            if progress is not None and command.function == "MODELCHUNK":
                sent += max((len(a) for a in command.args if isinstance(a, bytes)), default=0)
                progress(min(sent, total), total)
        if progress is not None:
            progress(total, total)
        return StoredVersion(name, int(reply[0]), _text(reply[1]), bool(int(reply[2])))

    @operation
    def pipelinestore(
        self,
        name: str,
        steps: Sequence[Mapping[str, Any]],
        *,
        inputs: Sequence[str],
        outputs: Sequence[str],
        tags: Mapping[str, str] | None = None,
        by: str = "",
    ) -> Plan[StoredVersion]:
        """Store a pipeline: models run in sequence on one worker, one request in all.

        Each step is ``{"model": name, "version": n (optional), "inputs": [...] or
        {model_input: tensor}, "outputs": [...] or {model_output: tensor}}``.
        """
        blob = pipeline_blob(inputs, outputs, steps)
        stated = yield from self._stated_by(by, name)
        reply: Any = None
        for command in commands.modelstore(name, "pipeline", blob, format="json", tags=tags,
                                           by=stated):
            reply = yield command
        return StoredVersion(name, int(reply[0]), _text(reply[1]), bool(int(reply[2])))

    @operation
    def modelget(
        self, name: str, version: int | str | None = None, *, blob: bool = False
    ) -> Plan[ModelInfo | tuple[ModelInfo, bytes]]:
        """A version's metadata (``latest`` by default); with ``blob=True`` also its
        file as stored, checked against its SHA-256. A read-only call: it leaves no
        trace in the audit (:meth:`modelexport` does)."""
        info, data = ModelInfo.parse((yield commands.modelget(name, version, blob=blob)))
        if not blob:
            return info
        if data is None or commands.sha256_hex(data) != info.digest:
            raise DigestError(f"{info.label} blob does not match its digest")
        return info, data

    @operation
    def modelexport(
        self, name: str, version: int | str | None = None, *, encryption_key: Any = None,
        by: str = "",
    ) -> Plan[tuple[ModelInfo, bytes]]:
        """A version's metadata and file, recorded as a ``read`` in the model's audit
        (needs write access to the model's keys, as an admin has). The file is as
        stored, checked against its SHA-256; with ``encryption_key`` (32 bytes or a
        key file), an encrypted version comes back decrypted."""
        stated = yield from self._stated_by(by, name)
        info, data = ModelInfo.parse((yield commands.modelexport(name, version, stated)))
        if data is None or commands.sha256_hex(data) != info.digest:
            raise DigestError(f"{info.label} blob does not match its digest")
        if info.encrypted and encryption_key is not None:
            key = encryption.load_key(encryption_key)
            data = encryption.decrypt({encryption.key_id(key): key}, info.encrypted, data,
                                      info.backend, info.format, info.label)
        return info, data

    @operation
    def audit(self, name: str, count: int = 100) -> Plan[list[dict[str, str]]]:
        """The model's audit, newest first: one dict per entry with ``event``
        (``store``, ``delete``, ``read``, ``load``, or an alias change: ``set``,
        ``commit``, ``delete``, ``rollback``, ``baked`` with ``alias``), ``by``, ``ms``,
        ``id`` and the event's own fields (``version``, ``digest``, ``signer``,
        ``encrypted``; ``from``, ``to``, ``epoch``, ``why``)."""
        _check_int("count", count, 1, AUDIT_MAXLEN)
        return audit.parse_entries((yield commands.audit(name, count)))

    @operation
    def modelversions(self, name: str) -> Plan[list[int]]:
        return [int(v) for v in (yield commands.modelversions(name))]

    @operation
    def modeldel(self, name: str, version: int | str | None = None, *, by: str = ""
                 ) -> Plan[int]:
        """Delete one version, or every version of ``name``; returns how many."""
        stated = yield from self._stated_by(by, name)
        return int((yield commands.modeldel(name, version, stated)))

    @operation
    def modelstats(self, name: str) -> Plan[dict[str, int]]:
        """Counters workers flush every few seconds: requests, errors, run_us, queue_us."""
        raw = yield Call(("HGETALL", keys.model_key(name, "stats")))
        it = iter(raw or ())
        return {_text(k): int(v) for k, v in zip(it, it, strict=True)}

    @operation
    def modellist(self) -> Plan[list[str]]:
        """Model names: a SCAN of every primary for their ``versions`` keys."""
        names: set[str] = set()
        for node in (yield Primaries()):
            cursor: Any = 0
            while True:
                cursor, found = yield Call(
                    ("SCAN", cursor, "MATCH", keys.MODEL_VERSIONS_PATTERN, "COUNT", 1000),
                    node=node,
                )
                names.update(keys.model_name_of(k) for k in found)
                if int(cursor) == 0:
                    break
        return sorted(names)

    # ---------------------------------------------------------------- lifecycle

    @operation
    def alias_set(
        self, name: str, alias: str, versions: int | Mapping[int, float], *,
        shadow: int | None = None, shadow_share: float = 0.0,
        guard: CanaryGuard | None = None, log_ttl_ms: int | None = None,
        by: str = "", warm: bool = True,
    ) -> Plan[tuple[str, int]]:
        """Point ``alias`` at a version, or split it: ``{3: 0.9, 4: 0.1}`` (the first
        is the control, the last the canary). It moves only once every live worker of
        the model has the versions loaded and warmed: returns ``("pending", epoch)``
        until then (see :meth:`alias_wait`), ``("active", epoch)`` when done.
        ``shadow``: a version mirrored ``shadow_share`` of the traffic (answers are the
        primary's). ``guard``: roll the canary back when it errs too much."""
        arms = {int(versions): 1.0} if isinstance(versions, int) else dict(versions)
        try:
            spec = aliases.format_arms(arms)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            raise ArgumentError(
                f"versions must be a version or {{version: share}}: {exc}") from None
        if not 0.0 <= shadow_share <= 1.0:
            raise ArgumentError(f"shadow_share must be within 0..1, got {shadow_share}")
        guard_args = guard.args() if guard else None
        stated = yield from self._stated_by(by, name)
        command = commands.alias_set(
            name, alias, spec, shadow=shadow or 0,
            shadow_ppm=round(shadow_share * aliases.PPM),
            guard=guard_args, log_ttl_ms=log_ttl_ms, by=stated, warm=warm,
            region=(yield from self._region_index()),
        )
        state, epoch = yield command
        return _text(state), int(epoch)

    @operation
    def alias_commit(self, name: str, alias: str) -> Plan[tuple[str, int]]:
        """Commit a pending alias change if it is warm everywhere now."""
        state, epoch = yield commands.alias_commit(name, alias, (yield from self._region_index()))
        return _text(state), int(epoch)

    @operation
    def alias_get(self, name: str, alias: str) -> Plan[aliases.AliasRoute]:
        return aliases.AliasRoute.parse(alias, text_map((yield commands.alias_get(name, alias))))

    @operation
    def aliases(self, name: str) -> Plan[dict[str, aliases.AliasRoute]]:
        return aliases.parse_routes((yield commands.alias_get(name)))

    @operation
    def alias_del(self, name: str, alias: str, *, by: str = "") -> Plan[int]:
        stated = yield from self._stated_by(by, name)
        region = yield from self._region_index()
        return int((yield commands.alias_del(name, alias, stated, region)))

    @operation
    def alias_history(self, name: str, count: int = 100) -> Plan[list[dict[str, str]]]:
        """Every alias change, newest first: when (``ms``), alias, event, from, to, by
        (the alias entries of :meth:`audit`)."""
        _check_int("count", count, 1, AUDIT_MAXLEN)
        return audit.parse_entries((yield commands.alias_history(name, count)))

    @operation
    def feedback(self, model: str, request_id: str, truth: float) -> Plan[tuple[str, int]]:
        """Ground truth for an answered request (its ``RunResult.rid``): returns
        ``("joined", version)``, ``("repeated", version)`` (nothing changes) or
        ``("unknown", 0)`` (never logged, or expired)."""
        if isinstance(truth, bool) or not isinstance(truth, int | float | np.number) \
                or not np.isfinite(truth):
            raise ArgumentError(f"truth must be a finite number, got {truth!r}")
        status, version = yield commands.feedback(model, _key("request_id", request_id), truth)
        return _text(status), int(version)

    @operation
    def quality(self, model: str) -> Plan[dict[int, dict[str, Any]]]:
        """Per version: ``quality`` counters joined from feedback and ``stats``
        (requests, errors, run_us, queue_us); ``quality.rank`` ranks them."""
        versions, _, _ = yield commands.quality(model)
        it = iter(versions or ())
        out: dict[int, dict[str, Any]] = {}
        for version, joined, stats in zip(it, it, it, strict=True):
            q = text_map(joined)
            out[int(version)] = {
                "kind": q.pop("kind", ""),
                "quality": {k: int(v) for k, v in q.items()},
                "stats": {k: int(v) for k, v in text_map(stats).items()},
            }
        return out

    @operation
    def drift(self, model: str, version: int, *, reference: int | None = None,
              current: int | None = None) -> Plan[drift.DriftReport]:
        """How far ``current`` (default: the latest window) has moved from
        ``reference`` (default: the version's first window), per input and output
        column: ``report.columns`` with PSI and Jensen-Shannon, most drifted first."""
        _check_int("version", version, 1)
        return drift.parse_reply((yield commands.drift(model, version, reference, current)))

    @operation
    def shadow_agreement(self, model: str) -> Plan[dict[tuple[int, int], dict[str, float]]]:
        """Per (primary, shadow) version pair: runs compared, agreed, largest difference."""
        _, _, pairs = yield commands.quality(model)
        it = iter(pairs or ())
        out = {}
        for pair, fields in zip(it, it, strict=True):
            primary, shadow = (int(v) for v in _text(pair).split(":"))
            f = text_map(fields)
            out[primary, shadow] = {"compared": int(f.get("compared", 0)),
                                    "agreed": int(f.get("agreed", 0)),
                                    "max_diff": float(f.get("max_diff", 0))}
        return out

    @operation
    def library_version(self) -> Plan[str]:
        """The version of the Functions library loaded in Redis (ELIBRARY if none)."""
        return _text((yield commands.library_version()))

    @operation
    def set_max_queue(self, depth: int, per_caller: int | None = None) -> Plan[None]:
        """Refuse runs with EBUSY while this many requests are queued in a partition
        (0: no bound), on every partition of this client; ``per_caller``: also while
        one caller (``caller=``, else one client) has that many queued there."""
        _check_int("depth", depth, 0)
        fields: list[Any] = ["max_queue", depth]
        if per_caller is not None:
            _check_int("per_caller", per_caller, 0)
            fields += ["max_queue_per_caller", per_caller]
        for partition in self.partitions:
            limits = keys.partition_limits(partition, self.region)
            yield Call(("HSET", limits, *fields), True, route=limits)

    @operation
    def set_deadletter_maxlen(self, maxlen: int) -> Plan[None]:
        """Keep about this many dead letters per partition (MAXLEN ~), on every
        partition of this client; 0 goes back to the default (DEADLETTER_MAXLEN)."""
        _check_int("maxlen", maxlen, 0)
        for partition in self.partitions:
            limits = keys.partition_limits(partition, self.region)
            yield Call(("HSET", limits, "deadletter_maxlen", maxlen), True, route=limits)

    @operation
    def set_audit_maxlen(self, name: str, maxlen: int) -> Plan[None]:
        """Keep about this many entries in model ``name``'s audit (MAXLEN ~); 0 goes
        back to the default (AUDIT_MAXLEN)."""
        _check_model(name)
        _check_int("maxlen", maxlen, 0)
        limits = keys.model_key(name, "limits")
        yield Call(("HSET", limits, "audit_maxlen", maxlen), True, route=limits)

    @operation
    def regions(self) -> Plan[list[str]]:
        """The deployment's regions in order (``inferis:regions``; [] when unset)."""
        return (yield from self._listed_regions())

    def _listed_regions(self) -> Plan[list[str]]:
        listed = _text((yield Call(("GET", keys.REGIONS), route=keys.REGIONS)) or b"")
        return [n for n in listed.split(",") if n]

    @operation
    def set_regions(self, names: Sequence[str]) -> Plan[list[str]]:
        """Name the deployment's regions, in order (docs/ACTIVE-ACTIVE.md). The order
        numbers each region's versions and breaks ties between alias decisions, so a
        list once set may only grow at its end."""
        names = list(names)
        if not names or len(names) > MAX_REGIONS or len(set(names)) != len(names) or not all(
            isinstance(n, str) and keys.is_region_name(n) for n in names
        ):
            raise ArgumentError(
                f"regions must be 1-{MAX_REGIONS} distinct lowercase names, got {names!r}")
        current = yield from self._listed_regions()
        if names[: len(current)] != current:
            raise ArgumentError(
                f"regions are {','.join(current)}: a new list must keep them, in that order, "
                "and may only add regions after them")
        yield Call(("SET", keys.REGIONS, ",".join(names)), True, route=keys.REGIONS)
        return names

    @operation
    def set_cache(self, name: str, ttl_ms: int | None, max_entries: int | None = None, *,
                  alias: str | None = None) -> Plan[None]:
        """Cache the answers of model ``name`` (or only of requests through its
        ``alias``) for ``ttl_ms``, at most ``max_entries`` per partition: this overrides
        what its versions were stored with. ``ttl_ms=0`` turns caching off at this
        level; ``None`` removes the setting, so the next level applies (alias, then
        model, then version). Workers hear of it at once (the model's notice)."""
        _check_model(name)
        if alias is not None and not (isinstance(alias, str) and aliases.is_alias_ref(alias)):
            raise ArgumentError(f"alias must be an alias name, got {alias!r}")
        key = keys.cache_settings(name)
        if ttl_ms is None:
            if max_entries is not None:
                raise ArgumentError("max_entries needs ttl_ms (None removes the setting)")
            yield Call(("HDEL", key, *caching.unset_fields(alias)), True, route=key)
        else:
            try:
                policy = caching.check_policy(ttl_ms, max_entries)
            except ValueError as exc:
                raise ArgumentError(str(exc)) from None
            yield Call(("HSET", key, *caching.settings_fields(policy, alias)), True, route=key)
        yield Call(("PUBLISH", MODELS_CHANNEL, name), True, route=key)

    @operation
    def cache_settings(self, name: str) -> Plan[caching.CacheSettings]:
        """The model's and its aliases' cache settings (what :meth:`set_cache` wrote);
        a version's own is in its ``extra["cache"]``."""
        _check_model(name)
        key = keys.cache_settings(name)
        return caching.CacheSettings.parse(text_map((yield Call(("HGETALL", key), route=key))))

    def key_for(self, routing_key: str, name: str) -> str:
        """A key for a tensor you store to pass by key later, next to the runs that
        read it: ``{inferis:N}:<routing_key>:<name>``, N chosen by ``routing_key`` (a
        user id, say) among this client's partitions. A run passed it by key goes to
        that partition, so the request and the tensor share one slot."""
        partition = keys.partition_for(_key("routing_key", routing_key), self.partitions)
        return f"{keys.partition_tag(partition, self.region)}:{routing_key}:{_key('name', name)}"

    # ---------------------------------------------------------------- helpers

    def _stated_by(self, by: str, name: str) -> Plan[str]:
        """The audit's ``by`` for a change to model ``name``: this client's ACL user
        (ACL WHOAMI, asked once; ``?`` if Redis refuses to say), then ``/`` and the
        caller id (``by``, else the client's ``caller``)."""
        if self._acl_user is None:
            try:
                valid = isinstance(name, str) and keys.is_model_name(name)
                user = yield Call(audit.WHOAMI, route=keys.model_base(name) if valid else "")
                self._acl_user = _text(user)
            except (PermissionDeniedError, RedisRefusedError):
                self._acl_user = ""  # a user without ACL WHOAMI: stated as unknown
        return audit.stated_by(self._acl_user, by or self.caller)

    def _region_index(self) -> Plan[int]:
        """This client's region index in ``inferis:regions`` (read once); 0 without a
        region."""
        if self._region_number is None:
            listed = yield from self._listed_regions()
            if self.region not in listed:
                raise ArgumentError(
                    f"region {self.region!r} is not in {keys.REGIONS} "
                    f"({','.join(listed) or 'unset'}); name the deployment's regions once "
                    "with: inferis regions NAME,NAME,...")
            self._region_number = listed.index(self.region) + 1
        return self._region_number

    def _timeout(self, timeout_ms: int | None) -> int:
        if timeout_ms is None:
            return self.timeout_ms
        _check_int("timeout_ms", timeout_ms, 1, MAX_TIMEOUT_MS)
        return timeout_ms

    def _own_id(self, request_id: str) -> str:
        if not isinstance(request_id, str) or not keys.is_request_id(request_id):
            raise ArgumentError(
                f"request_id must be 1-64 characters of letters, digits, _ . -, got {request_id!r}")
        if self._inflight.is_waiting(request_id):
            raise ArgumentError(f"request_id {request_id!r} is already in flight on this client")
        return request_id

    def _spread_partitions(self) -> list[int]:
        """Where runs without stored keys go: each primary in turn, to the first of
        this client's partitions it holds. One partition per primary keeps batches
        as large as on a single Redis (a worker reads each partition apart); the
        other partitions carry runs routed by key. Looked at again each second, as
        slots move."""
        now = time.monotonic()
        if now >= self._spread_due:
            found = _first_per_node(self.partitions, self._node_of, self.region)
            if found is not None:
                self._spread, self._spread_due = found, now + 1.0
        return self._spread

    def _learn_partition(self, model: str) -> Plan[None]:
        """Where the operator routed ``model`` (:meth:`set_model_partition`), looked up
        again at most every MODEL_ROUTE_TTL_S."""
        known = self._model_partitions.get(model)
        if (known is not None and known[1] > time.monotonic()) or not keys.is_model_name(model):
            return
        try:
            value = yield Call(("GET", keys.model_key(model, "partition")),
                               route=keys.model_base(model))
        except InferisError:
            # Redis away or the route unreadable: the run goes as it would have (and
            # says itself what happened to it); the route is looked for again soon.
            previous = known[0] if known is not None else None
            self._model_partitions[model] = (previous, time.monotonic() + 1.0)
            return
        text = _text(value) if value is not None else ""
        partition = int(text) if text.isdigit() else None
        self._model_partitions[model] = (partition, time.monotonic() + MODEL_ROUTE_TTL_S)

    @operation
    def set_model_partition(self, name: str, partition: int | None) -> Plan[None]:
        """Route every run of model ``name`` that has no stored inputs to ``partition``
        (None: back to the client's own partitions), so that a pool of workers of its
        own (``inferis worker --models NAME``) serves it. Clients look again within
        MODEL_ROUTE_TTL_S."""
        _check_model(name)
        key = keys.model_key(name, "partition")
        if partition is None:
            yield Call(("DEL", key), True, route=key)
        else:
            _check_int("partition", partition, 0)
            yield Call(("SET", key, partition), True, route=key)
        self._model_partitions.pop(name, None)

    def _partition_of_refs(self, ref_keys: Sequence[str]) -> int:
        """The partition of a run's stored keys (all under one partition's tag), or the
        next partition in turn when it has none."""
        if not ref_keys:
            if len(self.partitions) == 1:
                return self.partition
            spread = self._spread_partitions()
            self._next = (self._next + 1) % len(spread)
            return spread[self._next]
        found = {keys.partition_of(_key("stored input key", k)) for k in ref_keys}
        partition = found.pop() if len(found) == 1 else None
        if partition is None or partition not in self.partitions:
            example = keys.partition_tag(self.partition, self.region)
            raise ArgumentError(
                f"stored keys {list(ref_keys)} must all carry one partition tag of this client "
                f"(like {example}:features; client.key_for(user, name) makes such names), so "
                "the run and its tensors share one slot: in a Redis Cluster anything else "
                "is a CROSSSLOT"
            )
        return partition


def _first_per_node(partitions: Sequence[int], node_of: Callable[[str], str | None],
                    region: str = "") -> list[int] | None:
    by_node: dict[str, int] = {}
    for partition in partitions:
        node = node_of(keys.request_stream(partition, region))
        if node is None:
            return None
        by_node.setdefault(node, partition)
    return list(by_node.values())


def enqueue_commands(
    inflight: InFlight, steps: Sequence[Submit], owners: Sequence[T]
) -> list[tuple[Command, list[T]]]:
    """The commands that enqueue ``steps``, each with the owners of its steps.

    Runs that write no keys travel together: one MODELRUNMANY per partition and
    up to MAX_CALL_REQUESTS requests (or about MAX_CALL_BYTES of tensors), one
    stream entry and one reply for all of them. The others take a MODELRUN each.
    """
    calls: list[tuple[Command, list[T]]] = []
    groups: dict[int, list[tuple[Submit, T]]] = {}
    for step, owner in zip(steps, owners, strict=True):
        if step.coalescable:
            groups.setdefault(step.partition, []).append((step, owner))
        else:
            stream = keys.request_stream(step.partition, inflight.region)
            reply = inflight.reply_stream(step.partition)
            calls.append((commands.modelrun(stream, reply, step.request), [owner]))
    for partition, members in groups.items():
        stream = keys.request_stream(partition, inflight.region)
        reply = inflight.reply_stream(partition)
        chunk: list[tuple[Submit, T]] = []
        size = 0
        for member in members:
            grown = size + member[0].request.payload_bytes()
            if chunk and (len(chunk) >= MAX_CALL_REQUESTS or grown > MAX_CALL_BYTES):
                calls.append(_many(stream, reply, chunk))
                chunk, grown = [], member[0].request.payload_bytes()
            chunk.append(member)
            size = grown
        calls.append(_many(stream, reply, chunk))
    return calls


def _many(stream: str, reply: str, chunk: list[tuple[Submit, T]]) -> tuple[Command, list[T]]:
    command = commands.modelrunmany(stream, reply, [step.request for step, _ in chunk])
    return command, [owner for _, owner in chunk]


def pipeline_blob(
    inputs: Sequence[str], outputs: Sequence[str], steps: Sequence[Mapping[str, Any]]
) -> bytes:
    """Canonical JSON of a pipeline, so the same pipeline always has the same digest."""
    doc = {"inputs": list(inputs), "outputs": list(outputs), "steps": list(steps)}
    try:
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    except TypeError as exc:
        raise ArgumentError(f"pipeline steps must be JSON data: {exc}") from None


# ---------------------------------------------------------------- argument checks


_CALLER = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def _unit(unit: str | None) -> str:
    if unit is None:
        return ""
    if not isinstance(unit, str) or not 0 < len(unit.encode()) <= 256:
        raise ArgumentError(f"unit must be a string of 1-256 bytes, got {unit!r}")
    return unit


@dataclass(frozen=True)
class CanaryGuard:
    """Roll a split alias back to its control when the canary's error rate over at
    least ``min_requests`` exceeds ``max_error_rate`` within ``window_s``."""

    max_error_rate: float
    min_requests: int = 100
    window_s: float = 300.0

    def args(self) -> tuple[int, int, int]:
        if not 0.0 <= self.max_error_rate <= 1.0 or self.min_requests < 1 or self.window_s <= 0:
            raise ArgumentError(f"guard out of range: {self}")
        return (round(self.max_error_rate * aliases.PPM), self.min_requests,
                int(self.window_s * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _partition_list(
    partitions: int | Sequence[int] | None, partition: int, cluster: bool, region: str = ""
) -> list[int]:
    if partitions is None:
        return list(keys.spread_partitions(CLUSTER_PARTITIONS, region)) if cluster else [partition]
    if isinstance(partitions, int) and not isinstance(partitions, bool):
        _check_int("partitions", partitions, 1, 16384)
        return list(keys.spread_partitions(partitions, region))
    listed = list(partitions)
    for number in listed:
        _check_int("partitions item", number, 0)
    if not listed:
        raise ArgumentError("partitions must name at least one partition")
    return listed


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (
        high is not None and value > high
    ):
        bound = f" and at most {high}" if high is not None else ""
        raise ArgumentError(f"{name} must be an integer of at least {low}{bound}, got {value!r}")


_CHECKED_MODELS: set[str] = set()  # names already found valid: one lookup per run


def _check_model(model: Any) -> None:
    if model in _CHECKED_MODELS and type(model) is str:
        return
    if not isinstance(model, str) or not keys.is_model_name(model):
        raise ArgumentError(
            f"model name {model!r} must be 1-128 characters of letters, digits, _ . -"
        )
    if len(_CHECKED_MODELS) < 4096:
        _CHECKED_MODELS.add(model)


def _version(version: int | str | None) -> str:
    if version is None:
        return ""
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ArgumentError(f"version must be a number, 'latest' or an alias, got {version!r}")
    return str(version)


def _key(what: str, key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ArgumentError(f"{what} must be a key name (a non-empty str), got {key!r}")
    return key


def _key_list(what: str, value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ArgumentError(f"{what} must be a list of key names, got {value!r}")
    return [_key(f"{what} item", k) for k in value]


def _names(what: str, names: Sequence[str] | None, count: int) -> list[str]:
    if not names:
        return [""] * count
    listed = _key_list(what, names)
    if len(listed) != count:
        raise ArgumentError(f"{what} must name all {count} keys or be omitted, got {len(listed)}")
    return listed


def _named_inputs(inputs: Inputs) -> list[tuple[str, Any]]:
    """Inputs as (name, value) pairs; a sequence binds by position (name "")."""
    if type(inputs) is dict and all(type(name) is str and name for name in inputs):
        return list(inputs.items())
    if isinstance(inputs, Mapping):
        for name in inputs:
            if not isinstance(name, str) or not name:
                raise ArgumentError(f"inputs: names must be non-empty str, got {name!r}")
        return list(inputs.items())
    if isinstance(inputs, np.ndarray):
        return [("", inputs)]
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise ArgumentError(
            "inputs must be a mapping {input name: array} or a sequence of arrays, "
            f"got {type(inputs).__name__}"
        )
    return [("", value) for value in inputs]


def _encode_input(name: str, position: int, value: Any, what: str = "") -> bytes:
    try:
        return encode_tensor(value)
    except ArgumentError:
        raise
    except Exception as exc:
        label = what or f"input {name or position}"
        code = getattr(exc, "code", None)
        if code:
            raise type(exc)(f"{label}: {exc.message}") from None  # type: ignore[attr-defined]
        raise ArgumentError(
            f"{label} must be an array of a supported dtype, got {type(value).__name__}: {exc}"
        ) from None
