"""``inferis model alias|unalias|aliases|history|feedback|rank|compare|drift``: the model
lifecycle from the command line (the SDK's operations, printed for people)."""

from __future__ import annotations

import argparse
import math
import time

from inferis.client import ArgumentError, CanaryGuard, Client
from inferis.client import quality as Q

COMMANDS = ("alias", "unalias", "aliases", "history", "feedback", "rank", "compare", "drift")


def add_commands(msub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    alias = msub.add_parser("alias", parents=[common],
                            help="point an alias at a version, or split it over versions")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("spec", help="a version (3), or shares: 3=0.9,4=0.1 (control first)")
    alias.add_argument("--shadow", type=int, default=0, help="mirror traffic to this version")
    alias.add_argument("--shadow-share", type=float, default=0.0, help="share mirrored, 0..1")
    alias.add_argument("--guard", default="", metavar="MAX_ERROR_RATE,MIN_REQUESTS,WINDOW_S",
                       help="roll the canary (last version) back past this error rate")
    alias.add_argument("--log-ttl-ms", type=int, default=None,
                       help="how long answers wait for feedback (default 1 day)")
    alias.add_argument("--by", default="", help="who makes the change (kept in the audit)")
    alias.add_argument("--no-warm", action="store_true",
                       help="move at once, without waiting for workers to warm the versions")
    alias.add_argument("--wait", type=float, default=30.0,
                       help="seconds to wait for the workers to warm it (0: do not wait)")
    unalias = msub.add_parser("unalias", parents=[common], help="delete an alias")
    unalias.add_argument("name")
    unalias.add_argument("alias")
    unalias.add_argument("--by", default="")
    aliases = msub.add_parser("aliases", parents=[common], help="a model's aliases")
    aliases.add_argument("name")
    history = msub.add_parser("history", parents=[common], help="every alias change, newest first")
    history.add_argument("name")
    history.add_argument("--count", type=int, default=20)
    feedback = msub.add_parser("feedback", parents=[common],
                               help="the ground truth of an answered request")
    feedback.add_argument("name")
    feedback.add_argument("request_id")
    feedback.add_argument("truth", type=float)
    rank = msub.add_parser("rank", parents=[common],
                           help="versions ranked on quality from feedback, with 95%% intervals")
    rank.add_argument("name")
    compare = msub.add_parser(
        "compare", parents=[common],
        help="always-valid sequential A/B test (mSPRT) of two versions' accuracy")
    compare.add_argument("name")
    compare.add_argument("control", type=int)
    compare.add_argument("treatment", type=int)
    compare.add_argument("--alpha", type=float, default=0.05)
    drift = msub.add_parser(
        "drift", parents=[common],
        help="how far a version's traffic moved from its reference window, per column")
    drift.add_argument("name")
    drift.add_argument("--version", type=int, default=None, help="default: latest")
    drift.add_argument("--reference", type=int, default=None, help="window id (default: first)")
    drift.add_argument("--current", type=int, default=None, help="window id (default: latest)")


def _shares(spec: str) -> int | dict[int, float]:
    try:
        if "=" not in spec:
            return int(spec)
        pairs = [(int(v), float(w)) for v, w in (part.split("=") for part in spec.split(","))]
    except ValueError:
        raise ArgumentError(f"spec takes a version or VERSION=SHARE,..., got {spec!r}") from None
    if len({v for v, _ in pairs}) != len(pairs):
        raise ArgumentError(f"a version appears twice in {spec!r}")
    return dict(pairs)


def _guard(text: str) -> CanaryGuard | None:
    if not text:
        return None
    try:
        rate, minimum, window = text.split(",")
        return CanaryGuard(float(rate), int(minimum), float(window))
    except ValueError:
        raise ArgumentError(f"--guard takes MAX_ERROR_RATE,MIN_REQUESTS,WINDOW_S, got {text!r}"
                            ) from None


def _set_alias(client: Client, ns: argparse.Namespace) -> None:
    state, epoch = client.alias_set(
        ns.name, ns.alias, _shares(ns.spec), shadow=ns.shadow or None,
        shadow_share=ns.shadow_share, guard=_guard(ns.guard), log_ttl_ms=ns.log_ttl_ms,
        by=ns.by, warm=not ns.no_warm,
    )
    deadline = time.monotonic() + ns.wait
    while state == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
        state, epoch = client.alias_commit(ns.name, ns.alias)
    if state == "pending":
        print(f"{ns.name} {ns.alias}: pending (workers are warming it; "
              f"`inferis model aliases {ns.name}` shows when it moves)")
    else:
        arms = client.alias_get(ns.name, ns.alias).arms
        print(f"{ns.name} {ns.alias} -> {','.join(f'{v}={w}' for v, w in arms)} "
              f"(weights of 10000, epoch {epoch})")


def _print_aliases(client: Client, name: str) -> None:
    print(f"{'alias':16} {'versions (weight of 10000)':30} {'pending':20} {'shadow':12} state")
    for alias, route in sorted(client.aliases(name).items()):
        arms = ",".join(f"{v}={w}" for v, w in route.arms) or "-"
        pending = ",".join(f"{v}={w}" for v, w in route.pending) or "-"
        shadow = f"{route.shadow}@{route.shadow_ppm / 1e4:g}%" if route.shadow else "-"
        print(f"{alias:16} {arms:30} {pending:20} {shadow:12} {route.state or '-'}")


def _rank(client: Client, name: str) -> None:
    data = client.quality(name)
    rows = [Q.summarize(v, d["quality"], d["kind"]) for v, d in data.items() if d["kind"]]
    if not rows:
        print(f"no feedback joined for {name} yet")
        return
    print(f"{'rank':>4} {'version':>7} {'n':>8} {'metric':9} {'value':>8} {'95% interval':>19} "
          f"{'errors':>7} {'mean run':>9}")
    for i, q in enumerate(Q.rank(rows), start=1):
        stats = data[q.version]["stats"]
        requests = stats.get("requests", 0)
        error_rate = stats.get("errors", 0) / requests if requests else math.nan
        run_ms = stats.get("run_us", 0) / max(1, requests - stats.get("errors", 0)) / 1000
        print(f"{i:>4} {q.version:>7} {q.n:>8} {q.metric:9} {q.value:>8.4f} "
              f"[{q.low:.4f}, {q.high:.4f}] {error_rate:>7.2%} {run_ms:>7.3f}ms")


def _compare(client: Client, ns: argparse.Namespace) -> None:
    data = client.quality(ns.name)
    for version in (ns.control, ns.treatment):
        if data.get(version, {}).get("kind") != "classification":
            raise ArgumentError(f"version {version} has no classification feedback to compare")
    c, t = data[ns.control]["quality"], data[ns.treatment]["quality"]
    result = Q.msprt(c.get("correct", 0), c.get("n", 0), t.get("correct", 0), t.get("n", 0),
                     alpha=ns.alpha)
    print(f"accuracy: control v{ns.control} {c.get('correct', 0)}/{c.get('n', 0)}, "
          f"treatment v{ns.treatment} {t.get('correct', 0)}/{t.get('n', 0)}; "
          f"difference {result.difference:+.4f}, always-valid p {result.p_value:.4g}: "
          f"{result.decision}")


def _drift(client: Client, ns: argparse.Namespace) -> None:
    version = ns.version or client.modelget(ns.name).version
    report = client.drift(ns.name, version, reference=ns.reference, current=ns.current)
    if report.reference_window < 0:
        print(f"no drift histograms for {ns.name} v{version} yet (traffic through an alias "
              "is summarized)")
        return
    print(f"{ns.name} v{version}: window {report.current_window} against reference "
          f"{report.reference_window} ({len(report.windows)} windows kept)")
    print(f"{'column':28} {'ref n':>8} {'cur n':>8} {'PSI':>8} {'JS bits':>8} verdict")
    for c in report.columns:
        print(f"{c.column:28} {c.reference_n:>8} {c.current_n:>8} {c.psi:>8.4f} {c.js:>8.4f} "
              f"{c.verdict}")


def run(client: Client, ns: argparse.Namespace) -> None:
    command = ns.model_command
    if command == "alias":
        _set_alias(client, ns)
    elif command == "unalias":
        client.alias_del(ns.name, ns.alias, by=ns.by)
        print(f"{ns.name} {ns.alias} deleted")
    elif command == "aliases":
        _print_aliases(client, ns.name)
    elif command == "history":
        for h in client.alias_history(ns.name, ns.count):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(h["ms"]) / 1000))
            print(f"{when}Z {h['alias']:12} {h['event']:9} {h['from'] or '-':>14} -> "
                  f"{h['to'] or '-':14} epoch {h['epoch']:>3} by {h['by'] or '-'} {h['why']}")
    elif command == "feedback":
        status, version = client.feedback(ns.name, ns.request_id, ns.truth)
        print(f"{status}" + (f" (version {version})" if version else ""))
    elif command == "rank":
        _rank(client, ns.name)
    elif command == "compare":
        _compare(client, ns)
    elif command == "drift":
        _drift(client, ns)
