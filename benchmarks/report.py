"""Print and write the results: Markdown table, JSON, and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .machine import headline

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BASELINE = "inferis"


def _fmt(value: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ratio(value: float, base: float | None) -> str:
    if base is None or not base or math.isnan(base) or value is None or math.isnan(value):
        return "-"
    return f"{value / base:.2f}x"


def group_of(series: str) -> str:
    """The system a series belongs to: its label without the configuration."""
    return series.split(" [", 1)[0]


def best_points(
    results: list[dict[str, Any]], workload: str, group: str
) -> dict[int, dict[str, Any]]:
    """Per concurrency, the best of the group's configurations for each metric:
    ``rps`` (highest), ``p50`` and ``p99`` (lowest), each with the series that made it."""
    best: dict[int, dict[str, Any]] = {}
    for entry in results:
        if entry["workload"] != workload or group_of(entry["series"]) != group:
            continue
        for p in entry["points"]:
            if not p["completed"]:
                continue
            slot = best.setdefault(p["concurrency"], {})
            for metric, key, better in (("rps", "throughput_rps", max), ("p50", "p50_ms", min),
                                        ("p99", "p99_ms", min)):
                value = p[key]
                if metric not in slot or better(value, slot[metric][0]) == value:
                    slot[metric] = (value, entry["series"])
    return best


def _groups(results: list[dict[str, Any]], workload: str) -> list[str]:
    seen: list[str] = []
    for entry in results:
        group = group_of(entry["series"])
        if entry["workload"] == workload and group not in seen:
            seen.append(group)
    return seen


def summary_table(doc: dict[str, Any], workload: str) -> list[str]:
    """Each system at its best configuration per metric (named under it)."""
    results = doc["results"]
    points = sorted({p["concurrency"] for r in results if r["workload"] == workload
                     for p in r["points"]})
    low, high = (points[0], points[-1]) if points else (1, 1)
    lines = [
        f"| system | p50 ms at {low} in flight | req/s at {high} in flight "
        f"| p99 ms at {high} in flight |",
        "|---|---:|---:|---:|",
    ]
    for group in _groups(results, workload):
        best = best_points(results, workload, group)
        cells = []
        for conc, metric in ((low, "p50"), (high, "rps"), (high, "p99")):
            value = best.get(conc, {}).get(metric)
            if value is None:
                cells.append("-")
                continue
            config = value[1][len(group):].strip(" []")
            cells.append(f"{_fmt(value[0], 0 if metric == 'rps' else 2)}"
                         + (f" ({config})" if config else ""))
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines


def workload_table(doc: dict[str, Any], workload: str) -> list[str]:
    results = [r for r in doc["results"] if r["workload"] == workload]
    base = best_points(doc["results"], workload, BASELINE)
    lines = [
        "| system | in flight | req/s | p50 ms | p99 ms | errors | req/s vs inferis "
        "| p50 vs inferis | p99 vs inferis |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in results:
        if entry.get("error"):
            lines.append(f"| {entry['series']} | - | - | - | - | - | "
                         f"not measured: {entry['error'][:80]} | | |")
            continue
        for p in entry["points"]:
            b = base.get(p["concurrency"], {})
            lines.append(
                f"| {entry['series']} | {p['concurrency']} | {_fmt(p['throughput_rps'], 0)} "
                f"| {_fmt(p['p50_ms'])} | {_fmt(p['p99_ms'])} | {p['errors']} "
                f"| {_ratio(p['throughput_rps'], b.get('rps', (None,))[0])} "
                f"| {_ratio(p['p50_ms'], b.get('p50', (None,))[0])} "
                f"| {_ratio(p['p99_ms'], b.get('p99', (None,))[0])} |"
            )
    return lines


def targets(doc: dict[str, Any], workload: str = "fraud") -> list[str]:
    """The speed targets of the request path, each peer at its best configuration."""
    results = doc["results"]
    if not any(r["workload"] == workload for r in results):
        return []
    best = {g: best_points(results, workload, g) for g in _groups(results, workload)}
    points = sorted({c for b in best.values() for c in b})
    if not points or BASELINE not in best:
        return []
    low, high = points[0], points[-1]

    def get(group: str, conc: int, metric: str) -> float | None:
        value = best.get(group, {}).get(conc, {}).get(metric)
        return None if value is None else value[0]

    ours = {m: get(BASELINE, c, m) for c, m in ((low, "p50"), (high, "rps"), (high, "p99"))}
    rows = []
    ping_p50, hand_p50 = get("redis PING", low, "p50"), get("starlette", low, "p50")
    ping_rps, hand_rps = get("redis PING", high, "rps"), get("starlette", high, "rps")

    def row(what: str, value: float | None, bound: float | None, ok: bool | None) -> None:
        verdict = "-" if ok is None else ("met" if ok else "**not met**")
        rows.append(f"| {what} | {_fmt(value) if value is not None else '-'} "
                    f"| {_fmt(bound) if bound is not None else '-'} | {verdict} |")

    def check(value: float | None, bound: float | None, below: bool) -> bool | None:
        if value is None or bound is None:
            return None
        return value <= bound if below else value >= bound

    p50 = ours["p50"]
    row(f"p50 at {low} in flight ≤ 3x redis-py PING p50 (ms)", p50,
        ping_p50 and 3 * ping_p50, check(p50, ping_p50 and 3 * ping_p50, True))
    row(f"p50 at {low} in flight < hand-written endpoint's (ms)", p50, hand_p50,
        check(p50, hand_p50, True))
    rps = ours["rps"]
    row(f"req/s at {high} in flight ≥ 3x hand-written endpoint", rps, hand_rps and 3 * hand_rps,
        check(rps, hand_rps and 3 * hand_rps, False))
    row(f"req/s at {high} in flight ≥ 2x redis-py PING", rps, ping_rps and 2 * ping_rps,
        check(rps, ping_rps and 2 * ping_rps, False))
    peers = [g for g in best if g not in (BASELINE, "inprocess", "redis PING", "redis GET")]
    for peer in peers:
        bound = get(peer, high, "p99")
        row(f"p99 at {high} in flight < {peer}'s (ms)", ours["p99"], bound,
            check(ours["p99"], bound, True))
    return [
        f"Measured in this run on the {workload} workload; each bound is the peer's best "
        "configuration for that metric.", "",
        "| target | inferis | bound | |", "|---|---:|---:|---|", *rows,
    ]


def roundtrip_lines(doc: dict[str, Any]) -> list[str]:
    lines = [
        "Commands issued by the client or a worker cross the network (several may share "
        "one round trip when pipelined); commands inside functions are run by Redis itself "
        "within one FCALL and cost no round trip.",
        "",
    ]
    for m in doc.get("roundtrips", []):
        if "error" in m:
            lines.append(f"- round-trip measurement failed: {m['error']}")
            continue
        sums = {role: round(sum(c.values()), 2)
                for role, c in m["by_issuer_per_request"].items()}
        lines.append(
            f"Model `{m['model']}`, {m['calls']} calls at {m['concurrency']} in flight: "
            f"{m['total_per_request']} Redis commands per request (INFO commandstats delta, "
            "idle background subtracted); sent over the network per request: client "
            f"{sums.get('client', 0)}, workers {sums.get('worker', 0)}; run inside functions: "
            f"{sums.get('inside functions', 0)} (attribution from MONITOR)."
        )
        lines.append("")
        lines.append("| issued by | command | per request |")
        lines.append("|---|---|---:|")
        for role in ("client", "worker", "inside functions"):
            for command, n in m["by_issuer_per_request"].get(role, {}).items():
                lines.append(f"| {role} | `{command}` | {n} |")
        lines.append("")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    opts = doc["options"]
    out = [
        f"# inferis benchmark ({doc['tag']}, {doc['started']})",
        "",
        f"Machine: {headline(doc['machine'])}.",
        "",
        f"Closed loop: {opts['duration_s']} s measured per point after {opts['warmup_s']} s "
        f"warm-up; requests in flight: {', '.join(map(str, opts['concurrency']))}. "
        "Latency is per request as the caller sees it. Ratios are system / inferis at the "
        "same number in flight (req/s above 1x: more throughput than inferis; latency "
        "above 1x: slower than inferis).",
        "",
    ]
    target_lines = targets(doc)
    if target_lines:
        out += ["## Targets", "", *target_lines, ""]
    for name, w in doc["workloads"].items():
        out += [f"## {name}: {w['description']}", ""]
        stored = w["request_bytes"] - w["inferis_request_bytes"]
        out += [f"Request input: {w['request_bytes']} bytes of tensors by value"
                + (f"; inferis sends {w['inferis_request_bytes']} (the other {stored} are "
                   "already stored in Redis and passed by key; every other system receives "
                   "them in the request body)" if stored else "") + ".", ""]
        out += ["Each system at its best configuration, per metric:", ""]
        out += summary_table(doc, name)
        out += ["", "Every configuration:", ""]
        out += workload_table(doc, name)
        out.append("")
    out += ["## Systems", ""]
    for name, s in doc["systems"].items():
        status = s["status"] if s["status"] == "ok" else f"**{s['status']}**: {s.get('error', '')}"
        out.append(f"- **{name}** ({status}). {s.get('note', '')}. Settings: "
                   f"`{json.dumps(s.get('settings', {}), sort_keys=True)}`")
    if doc.get("roundtrips"):
        out += ["", "## Redis commands per request (inferis hot path)", ""]
        out += roundtrip_lines(doc)
    return "\n".join(out) + "\n"


# Reference lines, not systems: drawn dotted so the eye goes to the systems.
FLOORS = ("inprocess", "redis PING", "redis GET")


def _plotted(results: list[dict[str, Any]], workload: str) -> list[dict[str, Any]]:
    """One line per system: its configuration with the most req/s at the most in flight."""
    chosen: dict[str, dict[str, Any]] = {}
    for entry in results:
        if entry["workload"] != workload or not entry["points"]:
            continue
        group = group_of(entry["series"])
        top = max(entry["points"], key=lambda p: p["concurrency"])["throughput_rps"]
        held = chosen.get(group)
        if held is None or top > max(held["points"], key=lambda p: p["concurrency"])[
            "throughput_rps"
        ]:
            chosen[group] = entry
    return list(chosen.values())


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    workloads = list(doc["workloads"])
    fig, axes = plt.subplots(len(workloads), 2, figsize=(12, 3.6 * len(workloads) + 0.8),
                             squeeze=False)
    labels = sorted({group_of(r["series"]) for r in doc["results"] if r["points"]},
                    key=lambda s: (s != BASELINE, s in FLOORS, s))
    colors = {s: f"C{i}" for i, s in enumerate(labels)}
    ticks = sorted(set(doc["options"]["concurrency"]) | {1})
    for row, workload in enumerate(workloads):
        lat, thr = axes[row]
        for entry in _plotted(doc["results"], workload):
            pts = entry["points"]
            xs = [p["concurrency"] for p in pts]
            label = group_of(entry["series"])
            style = {"color": colors[label], "linewidth": 1.0 if label in FLOORS else 2.0}
            solid = ":" if label in FLOORS else "-"
            lat.plot(xs, [p["p50_ms"] for p in pts], marker="o", linestyle=solid, **style)
            lat.plot(xs, [p["p99_ms"] for p in pts], marker="x", linestyle="--", alpha=0.6,
                     **style)
            thr.plot(xs, [p["throughput_rps"] for p in pts], marker="o", linestyle=solid,
                     label=label, **style)
        for ax, title, unit in ((lat, "latency p50 (o) and p99 (x, dashed)", "ms"),
                                (thr, "throughput", "requests/s")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("requests in flight")
            ax.set_ylabel(unit)
            ax.set_title(f"{workload}: {title}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    handles, names = axes[0][1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8,
                   frameon=False)
    fig.suptitle(headline(doc["machine"]), fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(doc: dict[str, Any], directory: Path = RESULTS_DIR) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tag = doc["tag"]
    paths = {
        "json": directory / f"{tag}.json",
        "markdown": directory / f"{tag}.md",
        "png": directory / f"{tag}.png",
    }
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["markdown"].write_text(markdown(doc))
    plot(doc, paths["png"])
    return paths
