"""The report of one database's run: ratios, targets and verdicts, Markdown and JSON.

`analyse` fills in each measurement's ratio to the raw limit of the same work, S6's
adjustments per second, the S5 and S7 comparisons (p50 on the bulk-loaded database over p50
on the fresh one), S8 over S1 and S8's delivery lags, and the targets' verdicts;
`render_markdown` writes the table that is printed at the end and saved as
bench/results/<stamp>-<database>.md, and `write_results` saves it with the JSON file.
`checks_failed` and `targets_missed` decide the exit code.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common import BULK_ITEMS
from records import DatabaseRun, Measurement
from scenarios import (
    MAIN_PHASE,
    MANY,
    S5_FRESH_PHASE,
    S5_LOAD,
    S5_LOADED_PHASE,
    S5_SCENARIOS,
    S6,
    S7,
    S7_LOADED_PHASE,
    S8,
    S8_PHASE,
    raw_clients,
)
from tools import BENCH_DIR, CORES
from wrk import WRK_THREADS

RESULTS_DIR = BENCH_DIR / "results"

# The targets of the issue, as ratios measured in the same run.
RATIO_MIN = 0.5
P99_OVER_P50_MAX = 4.0
S5_P50_RATIO_MAX = 1.2
S7_P50_RATIO_MAX = 1.2
S8_RATIO_MIN = 0.8  # S8's req/s over S1's at 64 connections
LAG_P99_MAX_MS = 1000.0  # S8: an event's first arrival after its created_at, webhook and NATS
CHANNEL_NAMES = {"webhook": "webhook", "nats": "NATS"}
NO_TARGET = "no target"  # a figure the issue asks for without a bound: stated, not judged
WORKER_PEAK_MB_MAX = 150.0
NO_NON2XX_TARGET = "no non-2xx (nor socket error)"

# How a measurement's phase shows in the table's scenario column.
PHASE_LABELS = {
    MAIN_PHASE: "",
    S5_FRESH_PHASE: " fresh",
    S5_LOADED_PHASE: " 5M",
    S7_LOADED_PHASE: " loaded",
    S8_PHASE: "",
}


def analyse(result: DatabaseRun) -> None:
    """Fills in the ratios to the raw limit, the S5 comparison and the targets' verdicts."""
    raw = {(r.work, r.clients): r for r in result.raw_limits}
    for m in result.measurements:
        match = raw.get((m.raw_work, raw_clients(result.database, m.connections)))
        if match is not None and match.tps > 0:
            m.raw_rps = match.tps
            m.ratio = round(m.rps / match.tps, 3)

    def find(
        phase: str, scenario: str, connections: int, title: str | None = None
    ) -> Measurement | None:
        for m in result.measurements:
            if (m.phase, m.scenario, m.connections) == (phase, scenario, connections) and (
                title is None or m.title == title
            ):
                return m
        return None

    targets: list[dict[str, Any]] = []

    def target(name: str, measured: str, verdict: bool | str | None) -> None:
        if isinstance(verdict, str):
            shown = verdict
        else:
            shown = "not measured" if verdict is None else ("PASS" if verdict else "FAIL")
        targets.append({"target": name, "measured": measured, "verdict": shown})

    def ratio_target(name: str, m: Measurement | None) -> None:
        ratio = None if m is None else m.ratio
        target(
            name,
            "—" if ratio is None else f"{ratio}x",
            None if ratio is None else ratio >= RATIO_MIN,
        )

    tool = "pgbench" if result.database == "postgresql" else "the in-process loop"
    ratio_target(f"S1 at {MANY} connections ≥ {RATIO_MIN}x {tool}", find(MAIN_PHASE, "S1", MANY))
    if result.database == "postgresql":
        ratio_target(
            f"S3 ≥ {RATIO_MIN}x pgbench with all {MANY} clients on one row",
            find(MAIN_PHASE, "S3", MANY),
        )
    many = [m for m in result.measurements if m.connections == MANY]
    if many:
        spreads = [(m, m.p99_ms / m.p50_ms if m.p50_ms else float("inf")) for m in many]
        target(
            f"p99 ≤ {P99_OVER_P50_MAX:g}x p50 at {MANY} connections",
            ", ".join(f"{label(m)} {s:.1f}x" for m, s in spreads),
            all(s <= P99_OVER_P50_MAX for _, s in spreads),
        )
    else:
        target(f"p99 ≤ {P99_OVER_P50_MAX:g}x p50 at {MANY} connections", "—", None)
    everything = result.measurements + result.warmups
    bad = sum(m.non2xx for m in everything)
    socket_errors = sum(m.socket_errors for m in everything)
    target(
        NO_NON2XX_TARGET,
        f"{bad} non-2xx, {socket_errors} socket errors in {sum(m.requests for m in everything):,}"
        " requests",
        bad == 0 and socket_errors == 0 and bool(everything),
    )
    result.s5 = []
    for scenario in S5_SCENARIOS:
        fresh = find(S5_FRESH_PHASE, scenario.name, scenario.connections, scenario.title)
        loaded = find(S5_LOADED_PHASE, scenario.name, scenario.connections, scenario.title)
        if fresh is None or loaded is None:
            continue
        ratio = round(loaded.p50_ms / fresh.p50_ms, 3) if fresh.p50_ms else None
        prior = S5_LOAD.big if scenario.customers == "big" else S5_LOAD.per_other
        result.s5.append(
            {
                "title": scenario.title,
                "connections": scenario.connections,
                "prior_adjustments": f"{prior:,}",
                "fresh_rps": fresh.rps,
                "fresh_p50_ms": fresh.p50_ms,
                "loaded_rps": loaded.rps,
                "loaded_p50_ms": loaded.p50_ms,
                "p50_ratio": ratio,
                "target": scenario.customers == "big",
            }
        )
    judged = [row for row in result.s5 if row["target"]]
    target(
        f"S5 p50 with {S5_LOAD.big:,} prior adjustments ≤ {S5_P50_RATIO_MAX}x fresh",
        ", ".join(f"{row['title']} {row['p50_ratio']}x" for row in judged) or "—",
        None
        if not judged
        else all(r["p50_ratio"] is not None and r["p50_ratio"] <= S5_P50_RATIO_MAX for r in judged),
    )
    bulk = find(MAIN_PHASE, S6.name, S6.connections)
    result.s6 = []
    if bulk is not None:
        result.s6.append(
            {
                "connections": bulk.connections,
                "items_per_bulk": BULK_ITEMS,
                "bulks_per_s": bulk.rps,
                "adjustments_per_s": round(bulk.rps * BULK_ITEMS),
                "p50_ms": bulk.p50_ms,
                "p99_ms": bulk.p99_ms,
                "raw_clients": raw_clients(result.database, bulk.connections),
                "raw_tx_per_s": bulk.raw_rps,
                "raw_rows_per_s": None
                if bulk.raw_rps is None
                else round(bulk.raw_rps * BULK_ITEMS),
                "ratio": bulk.ratio,
            }
        )
    s6 = result.s6[0] if result.s6 else None
    target(
        f"S6 bulk-adjust adjustments/s ÷ the raw limit of the same inserts ({tool})",
        "—"
        if s6 is None
        else f"{s6['adjustments_per_s']:,} adjustments/s"
        + ("" if s6["ratio"] is None else f", {s6['ratio']}x"),
        None if s6 is None or s6["ratio"] is None else NO_TARGET,
    )
    result.s7 = []
    # Fresh: the main phase's database; loaded: S5's, or S7's own without S5.
    fresh = find(MAIN_PHASE, S7.name, S7.connections)
    loaded = find(S5_LOADED_PHASE, S7.name, S7.connections) or find(
        S7_LOADED_PHASE, S7.name, S7.connections
    )
    if fresh is not None and loaded is not None:
        history = {point["phase"]: point["adjustments"] for point in result.as_of}
        result.s7.append(
            {
                "title": S7.title,
                "connections": S7.connections,
                "loaded_phase": loaded.phase,
                "fresh_adjustments": history.get(fresh.phase),
                "fresh_rps": fresh.rps,
                "fresh_p50_ms": fresh.p50_ms,
                "loaded_adjustments": history.get(loaded.phase),
                "loaded_rps": loaded.rps,
                "loaded_p50_ms": loaded.p50_ms,
                "p50_ratio": round(loaded.p50_ms / fresh.p50_ms, 3) if fresh.p50_ms else None,
            }
        )
    s7 = result.s7[0] if result.s7 else None
    s7_prior = "" if s7 is None else f" with {s7['loaded_adjustments'] or 0:,} adjustments"
    target(
        f"S7 p50 of a balance as_of{s7_prior} ≤ {S7_P50_RATIO_MAX}x fresh",
        "—" if s7 is None or s7["p50_ratio"] is None else f"{s7['p50_ratio']}x",
        None if s7 is None or s7["p50_ratio"] is None else s7["p50_ratio"] <= S7_P50_RATIO_MAX,
    )
    s1 = find(MAIN_PHASE, "S1", MANY)
    s8 = find(S8_PHASE, S8.name, S8.connections)
    result.s8 = []
    if s1 is not None and s8 is not None and s1.rps:
        result.s8.append({"s1_rps": s1.rps, "s8_rps": s8.rps, "ratio": round(s8.rps / s1.rps, 3)})
    row = result.s8[0] if result.s8 else None
    target(
        f"S8 (a webhook endpoint and NATS) ≥ {S8_RATIO_MIN}x S1 at {MANY} connections",
        "—"
        if row is None
        else f"{row['s8_rps']:,.0f} ÷ {row['s1_rps']:,.0f} req/s = {row['ratio']}x",
        None if row is None else row["ratio"] >= S8_RATIO_MIN,
    )
    delivery = result.deliveries[0] if result.deliveries else None
    for channel, shown in CHANNEL_NAMES.items():
        got = None if delivery is None else delivery[channel]
        target(
            f"S8: {shown} delivery lag p99 < {LAG_P99_MAX_MS / 1000:g} s, every event arrived",
            "—" if got is None or delivery is None else lag_text(got, delivery),
            None
            if got is None
            else got["p99_ms"] is not None
            and got["p99_ms"] < LAG_P99_MAX_MS
            and got["missing"] == 0,
        )
    peaks = [mb for m in everything for mb in m.worker_peak_mb.values()]
    target(
        f"peak memory per worker ≤ {WORKER_PEAK_MB_MAX:g} MB",
        f"max {max(peaks):.1f} MB over {len(peaks)} samples" if peaks else "—",
        None if not peaks else max(peaks) <= WORKER_PEAK_MB_MAX,
    )
    result.targets = targets


def lag_text(got: dict[str, Any], delivery: dict[str, Any]) -> str:
    drained = got["drained_after_s"]
    return (
        f"p99 {fmt(got['p99_ms'], 0)} ms (p50 {fmt(got['p50_ms'], 0)}); {got['arrived']:,} of"
        f" {delivery['events']:,} events, "
        + (
            f"not all within {delivery['drain_timeout_s']:g} s"
            if drained is None
            else f"the last {drained} s"
        )
        + " after the load"
    )


def label(m: Measurement) -> str:
    phase = PHASE_LABELS.get(m.phase, f" {m.phase}")
    return f"{m.scenario}{phase}"


def worker_peaks(result: DatabaseRun) -> dict[str, dict[str, float]]:
    """phase → worker pid → the highest VmHWM seen."""
    peaks: dict[str, dict[str, float]] = {}
    for m in result.measurements + result.warmups:
        phase = peaks.setdefault(m.phase, {})
        for pid, mb in m.worker_peak_mb.items():
            phase[pid] = max(phase.get(pid, 0.0), mb)
    return peaks


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(result: DatabaseRun) -> str:
    tool = "pgbench" if result.database == "postgresql" else "sqlite3 loop"
    where = "database server" if result.database == "postgresql" else "disk and pragmas"
    lines = [
        f"## {result.database}: {result.mode} run, {result.started_at}",
        "",
        f"`loyalty serve --workers {result.workers}` on {CORES} cores; {result.duration_s} s per"
        f" scenario; wrk with {WRK_THREADS} thread. Versions: "
        + "; ".join(f"{k} {v}" for k, v in result.versions.items()),
        "",
        "| scenario | connections | req/s | p50 ms | p99 ms | non-2xx | raw limit req/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    # Each phase's rows in scenario order (S7 runs first in its phases, the database fresh).
    phase_order = list(dict.fromkeys(m.phase for m in result.measurements))
    for m in sorted(result.measurements, key=lambda m: (phase_order.index(m.phase), m.scenario)):
        errors = str(m.non2xx) + (f" (+{m.socket_errors} socket)" if m.socket_errors else "")
        lines.append(
            f"| {label(m)} {m.title} | {m.connections} | {fmt(m.rps, 0)} | {fmt(m.p50_ms)} |"
            f" {fmt(m.p99_ms)} | {errors} | {fmt(m.raw_rps, 0)} | {fmt(m.ratio)} |"
        )
    lines += [
        "",
        f"Raw limit ({tool}, same run, same {where}):",
        "",
        "| work | clients | customers | tx/s | p50 ms | p99 ms | failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.raw_limits:
        lines.append(
            f"| {r.work} | {r.clients} | {r.customers:,} | {fmt(r.tps, 0)} | {fmt(r.p50_ms)} |"
            f" {fmt(r.p99_ms)} | {r.failed} |"
        )
    if result.s5:
        lines += [
            "",
            "S5, ledger size: the same work on a fresh database and on one of 5,000,000"
            " adjustments:",
            "",
            "| work | connections | prior adjustments each | fresh req/s | fresh p50 ms"
            " | loaded req/s | loaded p50 ms | p50 ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in result.s5:
            lines.append(
                f"| {row['title']} | {row['connections']} | {row['prior_adjustments']} |"
                f" {fmt(row['fresh_rps'], 0)} | {fmt(row['fresh_p50_ms'])} |"
                f" {fmt(row['loaded_rps'], 0)} | {fmt(row['loaded_p50_ms'])} |"
                f" {fmt(row['p50_ratio'])} |"
            )
    for row in result.s6:
        raw = (
            ""
            if row["raw_rows_per_s"] is None
            else f"; raw limit {row['raw_rows_per_s']:,} rows/s ({fmt(row['raw_tx_per_s'], 1)}"
            f" transactions/s of {row['items_per_bulk']:,} rows, {row['raw_clients']}"
            f" client{'s' if row['raw_clients'] > 1 else ''}); ratio {fmt(row['ratio'])}"
        )
        lines += [
            "",
            f"S6, bulk-adjust: {row['adjustments_per_s']:,} adjustments/s"
            f" ({fmt(row['bulks_per_s'], 1)} bulks/s of {row['items_per_bulk']:,} at"
            f" {row['connections']} connections, p50 {fmt(row['p50_ms'])} ms){raw}.",
        ]
    if result.s7:
        lines += [
            "",
            "S7, point in time: a balance as_of the middle of the big customer's history, on a"
            " fresh database and on one where it has a long history:",
            "",
            "| work | connections | fresh: adjustments | req/s | p50 ms"
            " | loaded: adjustments | req/s | p50 ms | p50 ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in result.s7:
            lines.append(
                f"| {row['title']} | {row['connections']} | {row['fresh_adjustments'] or 0:,} |"
                f" {fmt(row['fresh_rps'], 0)} | {fmt(row['fresh_p50_ms'])} |"
                f" {row['loaded_adjustments'] or 0:,} | {fmt(row['loaded_rps'], 0)} |"
                f" {fmt(row['loaded_p50_ms'])} | {fmt(row['p50_ratio'])} |"
            )
    lines += s8_lines(result)
    lines += ["", "| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['measured']} | **{t['verdict']}** |" for t in result.targets]
    peaks = worker_peaks(result)
    verifies = [
        f"`loyalty verify` {v['phase']}"
        + (f" (attempt {v['attempt']})" if v["attempt"] > 1 else "")
        + f": {'ok' if v['ok'] else 'exit ' + str(v['exit_code'])} ({v['seconds']} s)"
        for v in result.verify
    ]
    as_of_checks = [
        f"as_of {p['phase']}: {p['as_of']} (adjustment {p['seq']:,} of {p['adjustments']:,})"
        f" answered {p['status']} balance {p['answered_balance']}, expected"
        f" {p['expected_balance']} {'ok' if p['ok'] else 'FAILED'}"
        for p in result.as_of
    ]
    counts = [
        f"{c['phase']}: {c['recorded']:,} adjustments recorded for {c['answered_2xx']:,} 2xx"
        f" answers (at most {c['in_flight_max']} more in flight) {'ok' if c['ok'] else 'FAILED'}"
        for c in result.ledger_counts
    ]
    notes = {
        "Peak memory per worker (VmHWM, MB)": "; ".join(
            f"{phase}: " + ", ".join(f"pid {pid} {mb:.1f}" for pid, mb in sorted(pids.items()))
            for phase, pids in peaks.items()
        ),
        "Checks": "; ".join(verifies + counts + as_of_checks),
        "Background CPU use before each phase (1 s, harness idle; other processes' load"
        " skews every number)": ", ".join(
            f"{k} {v:.0f}%" for k, v in result.background_cpu_percent.items()
        ),
        "Phases": ", ".join(f"{name} {seconds:.0f} s" for name, seconds in result.phases_s.items()),
    }
    lines.append("")
    lines += [f"- {name}: {text}" for name, text in notes.items() if text]
    if result.errors:
        lines += ["", "**Errors:**", "", *(f"- {e.splitlines()[0]}" for e in result.errors)]
    return "\n".join(lines) + "\n"


def s8_lines(result: DatabaseRun) -> list[str]:
    """S8's comparison with S1, and what the receiver got of the load's events."""
    lines = []
    for row in result.s8:
        lines += [
            "",
            f"S8, S1 with one webhook endpoint and NATS: {fmt(row['s8_rps'], 0)} req/s against"
            f" S1's {fmt(row['s1_rps'], 0)} at {MANY} connections in the same run:"
            f" {fmt(row['ratio'])}x.",
        ]
    for d in result.deliveries:
        signatures = d["signatures"]
        stream = d.get("nats_stream") or {}
        held = d.get("jetstream")
        lines += [
            "",
            f"S8, delivery of the {d['events']:,} events committed during the load (lag: first"
            " arrival at the receiver minus the event's `created_at`):",
            "",
            "| channel | arrived | repeats | p50 ms | p99 ms | max ms | all in, after the load |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for channel, shown in CHANNEL_NAMES.items():
            got = d[channel]
            drained = got["drained_after_s"]
            lines.append(
                f"| {shown} | {got['arrived']:,} | {got['repeats']:,} | {fmt(got['p50_ms'], 0)}"
                f" | {fmt(got['p99_ms'], 0)} | {fmt(got['max_ms'], 0)} |"
                + (
                    f" not within {d['drain_timeout_s']:g} s |"
                    if drained is None
                    else f" {drained} s |"
                )
            )
        lines += [
            "",
            f"Webhook signatures: {signatures['valid']} of {signatures['checked']} sampled"
            " deliveries verified with `standardwebhooks`. The receiver process used"
            f" {fmt(d.get('receiver_cpu_s'), 1)} CPU-seconds. "
            + (
                "JetStream not counted (not every event reached the subscriber)"
                if held is None
                else f"JetStream holds {held['held']} {held['type']} messages for"
                f" {held['outbox']} such events in the outbox ({'ok' if held['ok'] else 'WRONG'})"
            )
            + f". NATS stream {stream.get('stream', '?')}: "
            + (
                "deleted"
                if stream.get("stream_deleted")
                else f"not deleted ({stream.get('error') or 'no answer'})"
            )
            + ".",
        ]
    return lines


def write_results(result: DatabaseRun, stamp: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    base = RESULTS_DIR / f"{stamp}-{result.database}"
    payload = asdict(result)
    payload["worker_peak_mb"] = worker_peaks(result)
    base.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    base.with_suffix(".md").write_text(render_markdown(result))
    return base


def checks_failed(result: DatabaseRun) -> bool:
    """A check failed: an error was recorded, or an answer was not 2xx (or not one at all)."""
    return bool(result.errors) or any(
        t["verdict"] == "FAIL" and t["target"] == NO_NON2XX_TARGET for t in result.targets
    )


def targets_missed(result: DatabaseRun) -> bool:
    return any(t["verdict"] == "FAIL" for t in result.targets)
