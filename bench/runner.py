"""One database's run: the raw limit, then each phase's server, scenarios and checks.

For one backend it records the versions, measures the raw limits on a migrated and seeded
scratch database, then for each phase of scenarios.py makes a fresh database, starts the
server, creates the customers through the API (and S7's few adjustments of the big customer,
or bulk-loads the database for S5 and S7, with `loyalty verify` before anything is
measured), finds and checks S7's point in time, runs the warm-up and the scenarios with wrk,
stops the server, runs `loyalty verify`, and checks that the ledger holds every adjustment
answered 2xx. S8's phase also starts the webhook receiver and NATS subscriber
(deliveries.py) before the server, which publishes to a NATS stream of its own and delivers
to one webhook endpoint at the receiver, and after S8's wrk waits for the load's events.
Everything lands in a DatabaseRun; `run_database` also records a failure instead of raising
it, and always stops the server (and the receiver) and drops the scratch databases.
"""

from __future__ import annotations

import platform
import secrets
import sqlite3
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from backends import Backend
from common import BIG_CUSTOMER, BULK_ITEMS, LoadPlan
from deliveries import PhaseEvents, stop_receivers
from records import DatabaseRun, Measurement
from scenarios import (
    ID_LISTS,
    RAW_WARMUP,
    WARMUP,
    Phase,
    Scenario,
    phases,
    raw_s,
    raw_specs,
    scenario_s,
    warmup_s,
)
from server import Server, stop_all
from tools import CORES, background_cpu_percent, first_line, loyalty_env, run_loyalty, say
from wrk import run_wrk

LOYALTY_TIMEOUT_S = 600
VERIFY_TIMEOUT_S = 3600
VERIFY_ATTEMPTS = 3
VERIFY_UNAVAILABLE_EXIT = 2
BACKGROUND_CPU_WARN_PERCENT = 10.0


@dataclass(frozen=True)
class RunOptions:
    quick: bool
    duration_s: int  # per scenario and per raw-limit run
    skip_s5: bool
    keep: bool  # keep the work files and SQLite's (PostgreSQL's are dropped all the same)
    nats_url: str  # S8's NATS server
    only: frozenset[str] | None = None  # --only: just these scenarios


@dataclass
class AdjustmentTally:
    """What wrk saw of a phase's adjustments, for the ledger check."""

    answered: int = 0  # 2xx answers to adjustments, counted by wrk
    in_flight_max: int = 0  # requests that may have been served after wrk stopped counting

    def add(self, m: Measurement, scenario: Scenario) -> None:
        self.answered += (m.requests - m.non2xx) * scenario.adjustments_per_request
        self.in_flight_max += m.connections * scenario.adjustments_per_request


class DatabaseRunner:
    """The phases of one database's run, each recording into `result`."""

    def __init__(self, backend: Backend, workdir: Path, stamp: str, options: RunOptions):
        self.backend = backend
        self.kind = backend.kind
        self.workdir = workdir
        self.options = options
        self.secret = secrets.token_hex(32)
        self.password = secrets.token_urlsafe(18)
        self.warmup_s = warmup_s(options.quick, options.duration_s)
        self.result = DatabaseRun(
            database=backend.kind,
            mode="quick" if options.quick else "full",
            duration_s=options.duration_s,
            started_at=stamp,
            workers=CORES,
        )
        self.files = self._write_id_files()

    def _write_id_files(self) -> dict[str, Path]:
        """The files wrk's scripts read: the bearer token (written later) and each id list."""
        files = {"token": self.workdir / f"token-{self.kind}.txt"}
        for name, ids in ID_LISTS.items():
            files[name] = self.workdir / f"ids-{name}.txt"
            files[name].write_text("".join(f"{cid}\n" for cid in ids))
        return files

    def run(self) -> None:
        self.backend.ensure_running()
        self.result.versions = {
            "database": self.backend.server_version(),
            "wrk": first_line(["wrk", "--version"]).split(" [")[0].removeprefix("wrk "),
            "python": platform.python_version(),
            "sqlite3 module": sqlite3.sqlite_version,
            **self.backend.tool_versions(),
        }
        self.raw_limits()
        for phase in phases(self.options.quick, self.options.skip_s5, self.options.only):
            self.service_phase(phase)

    # ---- the raw limit

    def raw_limits(self) -> None:
        self.sample_background("raw limit")
        with self.timed("raw limit"):
            url = self.backend.new_database("raw")
            migrated = self.loyalty(url, "db", "migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"loyalty db migrate failed: {migrated.stderr[-2000:]}")
            self.backend.seed_customers(url)
            say(f"{self.kind}: raw limit warm-up ({self.warmup_s}s)")
            self.backend.raw(url, RAW_WARMUP, self.warmup_s, self.workdir)
            for spec in raw_specs(self.kind, self.options.quick, self.options.only):
                duration_s = raw_s(spec, self.options.quick, self.options.duration_s)
                raw = self.backend.raw(url, spec, duration_s, self.workdir)
                self.result.raw_limits.append(raw)
                say(
                    f"{self.kind}: raw {raw.tool} {spec.work} clients={spec.clients}:"
                    f" {raw.tps:,.0f} tx/s, p50 {raw.p50_ms:.2f} ms, p99 {raw.p99_ms:.2f} ms"
                )
            self.backend.drop(url)

    # ---- the service's phases

    def service_phase(self, phase: Phase) -> None:
        name = phase.name
        url = self.backend.new_database(name)
        label = f"{self.kind}-{name}"
        events = None
        if phase.integrations:
            events = PhaseEvents(self.backend, url, self.workdir, label, self.options.nats_url)
        settings = events.settings if events is not None else None
        server = Server(url, self.workdir, label, self.secret, self.password, settings)
        tally = AdjustmentTally()
        preloaded = 0
        as_of = ""
        webhook_secret = ""
        try:
            with self.timed(f"{name}: start and create customers"):
                if events is not None:
                    events.start()
                server.start()
                token = server.login()
                ids = [*ID_LISTS["random"], *phase.extra_customers]
                server.create_customers(token, ids)
                say(f"{self.kind} {name}: service up on {server.base_url}, {len(ids)} customers")
                if events is not None:
                    _, webhook_secret = server.create_webhook(token, events.hook_url)
                    say(f"{self.kind} {name}: webhook endpoint {events.hook_url}, NATS")
                if phase.seed_big:
                    server.adjust_several(token, BIG_CUSTOMER, phase.seed_big)
                    tally.answered += phase.seed_big
            if phase.load is not None:
                server.stop()
                preloaded = self.bulk_load(url, name, phase.load)
                with self.timed(f"{name}: start and create customers"):
                    server.start()
                    token = server.login()
            self.files["token"].write_text(token + "\n")
            if any(scenario.as_of for scenario in phase.scenarios):
                as_of = self.as_of(server, token, url, name)
            self.sample_background(name)
            with self.timed(f"{name}: scenarios"):
                warm = self.measure(server, WARMUP, self.warmup_s, name)
                self.result.warmups.append(warm)
                tally.add(warm, WARMUP)
                for scenario in phase.scenarios:
                    duration_s = scenario_s(scenario, self.options.quick, self.options.duration_s)
                    watched = events if scenario.events else None
                    before = watched.position() if watched is not None else 0
                    m = self.measure(server, scenario, duration_s, name, as_of)
                    self.result.measurements.append(m)
                    if watched is not None:
                        record, errors = watched.after_load(before, webhook_secret)
                        self.result.deliveries.append(
                            {"phase": name, "scenario": scenario.name, **record}
                        )
                        self.result.errors += [f"{name}: {error}" for error in errors]
                    tally.add(m, scenario)
                    say(
                        f"{self.kind} {name}: {m.scenario} {m.title}, c={m.connections}:"
                        f" {m.rps:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms,"
                        f" non-2xx {m.non2xx}, socket errors {m.socket_errors},"
                        + (f" failed items {m.item_errors}," if m.item_errors else "")
                        + f" workers {m.worker_peak_mb} MB"
                    )
        except Exception as error:
            tail = server.log_tail()
            raise RuntimeError(
                f"{name}: {type(error).__name__}: {error}\n--- end of the service's log:\n{tail}"
            ) from error
        finally:
            server.stop()
            if events is not None:
                deleted = events.stop()  # the stream, once the server no longer publishes
                for record in self.result.deliveries:
                    record.setdefault("nats_stream", deleted)
        with self.timed(f"{name}: verify"):
            self.verify(url, name)
            recorded = self.backend.count_adjustments(url) - preloaded
        self.check_ledger(name, tally, recorded)
        if not self.options.keep:
            self.backend.drop(url)

    def bulk_load(self, url: str, phase: str, plan: LoadPlan) -> int:
        """A bulk load, which must pass `loyalty verify`; returns the rows it added."""
        with self.timed(f"{phase}: bulk load"):
            say(f"{self.kind} {phase}: bulk-loading {plan.total:,} adjustments")
            self.backend.bulk_load(url, plan)
        with self.timed(f"{phase}: verify after load"):
            if not self.verify(url, f"{phase} after bulk load"):
                raise RuntimeError("the bulk-loaded database does not pass loyalty verify")
        return plan.total

    def as_of(self, server: Server, token: str, url: str, phase: str) -> str:
        """S7's as_of: the time of the adjustment in the middle of the big customer's history
        (not its tip). The service's answer there must be the balance the ledger had then,
        or the run fails (measured all the same)."""
        point = self.backend.as_of_point(url, BIG_CUSTOMER)
        moment = datetime.fromtimestamp(point.as_of_ms // 1000, UTC)
        as_of = f"{moment:%Y-%m-%dT%H:%M:%S}.{point.as_of_ms % 1000:03d}Z"
        response = server.balance_as_of(token, BIG_CUSTOMER, as_of)
        answered: Decimal | None = None
        with suppress(ValueError, KeyError, TypeError, InvalidOperation):
            answered = Decimal(str(response.json(parse_float=Decimal)["balance"]))
        expected = Decimal(point.balance_hundredths) / 100
        ok = response.status_code == 200 and answered == expected
        self.result.as_of.append(
            {
                "phase": phase,
                "customer": BIG_CUSTOMER,
                "adjustments": point.last_seq,
                "as_of": as_of,
                "seq": point.seq,
                "expected_balance": str(expected),
                "balance_now": str(Decimal(point.tip_hundredths) / 100),
                "status": response.status_code,
                "answered_balance": None if answered is None else str(answered),
                "ok": ok,
            }
        )
        say(
            f"{self.kind} {phase}: as_of {as_of} (adjustment {point.seq:,} of"
            f" {point.last_seq:,}): expected {expected}, answered"
            f" {response.status_code} {answered} {'ok' if ok else 'WRONG'}"
        )
        if not ok:
            self.result.errors.append(
                f"{phase}: GET balance as_of={as_of} answered {response.status_code}"
                f" {response.text[:300]}; expected balance {expected}"
            )
        return as_of

    def script_args(self, scenario: Scenario, as_of: str) -> list[str]:
        """What the scenario's wrk script takes after the token and id files."""
        if scenario.script == "bulk.lua":
            # A new reference prefix for each wrk run: no reference is ever used twice.
            return [str(BULK_ITEMS), secrets.token_hex(6)]
        if scenario.as_of:
            return [f"as_of={as_of}"]
        return []

    def measure(
        self, server: Server, scenario: Scenario, duration_s: int, phase: str, as_of: str = ""
    ) -> Measurement:
        """One scenario with wrk, then every worker's peak memory so far."""
        ids_file = self.files[scenario.customers]
        result = run_wrk(
            server.base_url,
            scenario,
            self.files["token"],
            ids_file,
            duration_s,
            self.script_args(scenario, as_of),
        )
        return Measurement(
            phase=phase,
            scenario=scenario.name,
            title=scenario.title,
            connections=scenario.connections,
            seconds=round(result.seconds, 2),
            requests=result.requests,
            rps=round(result.rps, 1),
            p50_ms=round(result.p50_ms, 3),
            p99_ms=round(result.p99_ms, 3),
            non2xx=result.non2xx,
            socket_errors=result.socket_errors,
            raw_work=scenario.raw_work,
            worker_peak_mb=server.worker_peak_mb(),
            item_errors=result.item_errors,
        )

    # ---- the checks

    def verify(self, url: str, phase: str) -> bool:
        """`loyalty verify` must exit 0. Exit 2 ("the database is unavailable") is not a
        broken invariant: on PostgreSQL it is what a check query that outlasts the service's
        statement timeout looks like (5,000,000 rows on a busy machine), so it is retried;
        every attempt is recorded."""
        done = None
        lines: list[str] = []
        for attempt in range(1, VERIFY_ATTEMPTS + 1):
            say(f"{self.kind}: loyalty verify ({phase}), attempt {attempt} ...")
            started = time.monotonic()
            done = self.loyalty(url, "verify", timeout_s=VERIFY_TIMEOUT_S)
            elapsed = round(time.monotonic() - started, 1)
            lines = (done.stdout + done.stderr).strip().splitlines()
            self.result.verify.append(
                {
                    "phase": phase,
                    "attempt": attempt,
                    "ok": done.returncode == 0,
                    "exit_code": done.returncode,
                    "seconds": elapsed,
                    "summary": lines[-1] if lines else "",
                }
            )
            say(
                f"{self.kind}: loyalty verify ({phase}): exit {done.returncode},"
                f" {elapsed}s — {lines[-1] if lines else ''}"
            )
            if done.returncode != VERIFY_UNAVAILABLE_EXIT:
                break
        if done is not None and done.returncode == 0:
            return True
        (self.workdir / f"verify-{phase}.txt").write_text("\n".join(lines))
        self.result.errors.append(f"loyalty verify failed after {phase}:\n" + "\n".join(lines))
        return False

    def check_ledger(self, phase: str, tally: AdjustmentTally, recorded: int) -> None:
        # Every 2xx must be recorded; at most the requests in flight when wrk stopped may be
        # recorded without wrk having counted their answer.
        answered, in_flight_max = tally.answered, tally.in_flight_max
        counts_ok = answered <= recorded <= answered + in_flight_max
        self.result.ledger_counts.append(
            {
                "phase": phase,
                "answered_2xx": answered,
                "recorded": recorded,
                "in_flight_max": in_flight_max,
                "ok": counts_ok,
            }
        )
        if not counts_ok:
            self.result.errors.append(
                f"{phase}: {recorded} adjustments recorded for {answered} 2xx answers"
                f" (at most {in_flight_max} more may have been in flight)"
            )

    # ---- helpers

    def loyalty(
        self, url: str, *command: str, timeout_s: float = LOYALTY_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        env = loyalty_env(LOYALTY_DATABASE_URL=url, LOYALTY_JWT_SECRET=self.secret)
        return run_loyalty(env, *command, timeout_s=timeout_s)

    def sample_background(self, moment: str) -> None:
        busy = background_cpu_percent()
        self.result.background_cpu_percent[moment] = busy
        if busy > BACKGROUND_CPU_WARN_PERCENT:
            say(f"{self.kind}: warning: the machine was {busy:.0f}% busy before {moment}")

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Adds the time the block takes to the phase's entry in the results."""
        started = time.monotonic()
        try:
            yield
        finally:
            phases_s = self.result.phases_s
            phases_s[phase] = round(phases_s.get(phase, 0.0) + time.monotonic() - started, 1)


def run_database(backend: Backend, workdir: Path, stamp: str, options: RunOptions) -> DatabaseRun:
    """One database's whole run. A failure is recorded in the result's errors (what was
    measured before it is still reported); the server is always stopped and the scratch
    databases always dropped (the SQLite files kept with --keep)."""
    runner = DatabaseRunner(backend, workdir, stamp, options)
    try:
        runner.run()
    except Exception as error:  # record it, still write what was measured
        runner.result.errors.append(f"{type(error).__name__}: {error}")
        say(f"{backend.kind}: FAILED: {type(error).__name__}: {error}")
        print(traceback.format_exc(), flush=True)
    finally:
        stop_all()
        stop_receivers()
        if backend.kind == "postgresql" or not options.keep:
            backend.drop_all()
    return runner.result
