"""Least-privilege ACL roles: the rules of ``ACL SETUSER`` for a client, a worker, an
admin and a feedback role (``inferis acl``).

A Redis Function is not a privilege boundary: Redis checks every command a
Function runs against the caller's ACL, and each inferis Function asks about all
its writes before the first one (``may`` in lua/inferis.lua), so a caller
without a right gets ``ENOPERM`` and nothing half-written. The roles are
therefore key patterns and command lists over what each Function touches:

- client: run models (``MODELRUN``, ``MODELRUNMANY``), read their answers (its
  reply streams, ``done`` lists, output keys), read models (``MODELGET``), and
  write tensors only under its own prefix; no model, alias or config writes;
- worker: the request streams and every key of the partitions, the model keys
  (stats, warm-up, logs, drift), the library (``FUNCTION LOAD``, to keep it on
  every primary) and ``CLIENT LIST`` (to tell dead consumers): trusted code;
- admin: store, export (an audited read) and delete models, set aliases, publish
  the notice, set queue and retention bounds (``{inferis:N}:limits``,
  ``inferis:{<name>}:limits``); it cannot enqueue or read tensors;
- feedback: ``MODELFEEDBACK`` and ``MODELQUALITY`` only.

``-@dangerous`` is taken from every role (FLUSHALL, KEYS, CONFIG, DEBUG, ...)
and the few commands a role needs back are named.

What a client can still do, because the Functions it calls need it: write
the queue count (``{inferis:N}:config``, so it could zero it to skip
back-pressure once, until the next settle corrects it), append to request
streams directly (workers treat a malformed entry as that entry's error), and
read any reply stream and request-owned key of the partitions (reply streams
are named by a random client id, not by user). The queue bound, models,
aliases and everything of other prefixes are out of its reach.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferis.client.protocol.defaults import MODELS_CHANNEL
from inferis.client.protocol.keys import REGIONS

ROLES = ("client", "worker", "admin", "feedback")

# What every SDK connection sends (redis-py: HELLO/AUTH, CLIENT SETNAME; its CLIENT
# SETINFO, Redis 7.2+, is refused and redis-py goes on), what cluster clients ask
# to learn the slot map, and ACL WHOAMI (the user the SDK states in the audit).
_CONNECT = ["+ping", "+hello", "+auth", "+client|setname", "+client|id",
            "+select", "+readonly", "+cluster|slots", "+cluster|shards", "+cluster|nodes",
            "+cluster|myid", "+command", "+time", "+acl|whoami"]
_PARTITION = "{inferis:*}"
_MODEL = "inferis:{*}"


def rules(role: str, prefix: str = "", caller: str = "") -> list[str]:
    """The ``ACL SETUSER`` rules of ``role`` (without the user name, ``on`` and the
    password). ``prefix``: the client's tensor keys are ``{inferis:N}:<prefix>...``
    (``client.key_for(user, name)`` with routing keys that start with it).
    ``caller``: the client's reply streams must be its caller's (``Client(...,
    caller=...)``), so its queued requests count against its own per-caller bound."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    base = ["resetkeys", "resetchannels", "-@all", *_CONNECT]
    if role == "client":
        return [*base, "+fcall", "+fcall_ro", "+xread", "+xdel", "+blpop", "+mget", "+scan",
                "+@read", "+@write", "+@stream", "-@dangerous", "-function", "-flushall",
                "-flushdb",
                f"~{_PARTITION}:requests", f"~{_PARTITION}:config", f"%R~{_PARTITION}:limits",
                f"~{_PARTITION}:replies:{caller}-*" if caller else f"~{_PARTITION}:replies:*",
                f"~{_PARTITION}:r:*",
                f"~{_PARTITION}:{prefix}*" if prefix else f"~{_PARTITION}:*",
                f"%R~{_MODEL}", f"%R~{_MODEL}:*", f"%R~{REGIONS}"]
    if role == "worker":
        return [*base, "+@all", "-@dangerous", "-function|delete", "-function|flush",
                "-function|restore", "+client|list", "+function|load", "+function|list",
                "+info", "+xautoclaim", "+xclaim", "+xinfo", "+xgroup", "+xpending",
                "+subscribe", "+unsubscribe", "+psubscribe",
                f"~{_PARTITION}*", f"~{_MODEL}*", f"%R~{REGIONS}", f"&{MODELS_CHANNEL}"]
    if role == "admin":
        return [*base, "+fcall", "+fcall_ro", "+scan", "+publish", "+@read", "+@write",
                "-@dangerous", "-function", "-flushall", "-flushdb",
                f"~{_MODEL}*", f"~{_PARTITION}:limits", f"~{REGIONS}", f"&{MODELS_CHANNEL}"]
    return [*base, "+fcall", "+fcall_ro", "+@read", "+@write", "-@dangerous", "-function",
            f"~{_MODEL}", f"~{_MODEL}:p:*", f"~{_MODEL}:quality:*", f"~{_MODEL}:feedback",
            f"%R~{_MODEL}:*", f"%R~{REGIONS}"]


def setuser(user: str, role: str, password: str, prefix: str = "", caller: str = ""
            ) -> list[str]:
    """A whole ``ACL SETUSER`` command for one user."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"user name {user!r} must be one word")
    if not password:
        raise ValueError("a role needs a password")
    return ["ACL", "SETUSER", user, "reset", "on", f">{password}",
            *rules(role, prefix, caller)]


def format_command(words: Sequence[str]) -> str:
    """As a line for redis-cli or an ACL file (``user`` lines take the rules alone)."""
    return " ".join(words)
