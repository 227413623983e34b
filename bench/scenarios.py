"""What a run measures: the scenarios, the raw limits they are compared with, the phases.

A scenario is one wrk run against the service (S1 … S7); a raw-limit spec is one run of the
same work straight on the database (pgbench, or sqlite_loop.py); a phase is one fresh
database and server on which a list of scenarios runs (`main`, S5's `s5-fresh` and
`s5-loaded`, and `s7-loaded` when S5 does not run). A new scenario goes here: define it, put
it in the phase that measures it (FULL_MAIN and, if quick runs need it, QUICK_MAIN; or
S5_SCENARIOS, which run on the fresh and the bulk-loaded database), and if no raw limit
measures its `raw_work` yet, add one RawSpec to FULL_RAW_SPECS (and QUICK_RAW_SPECS if
--quick runs it), its work as pgbench/<work>.sql and in sqlite_loop.py's WORKS. A new wrk
script goes beside adjust.lua, a new list of customers into ID_LISTS. `--only` keeps the
scenarios it names (and the raw limits and phases they need).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common import BIG_CUSTOMER, BULK_ITEMS, CUSTOMER_COUNT, HOT_CUSTOMER, LoadPlan, customer_id

CONNECTION_COUNTS = (1, 16, 64)
MANY = 64
FULL_DURATION_S = 20
QUICK_DURATION_S = 8
WARMUP_S = 3
QUICK_WARMUP_S = 2
WARMUP_CONNECTIONS = 16
QUICK_SHORT_S = 4  # with --quick: S7 and S6's raw limit (adjust_bulk)
WRK_TIMEOUT_S = 10

# The customer-id lists a scenario can draw from; the runner writes each to a file for wrk.
ID_LISTS: dict[str, tuple[str, ...]] = {
    "random": tuple(customer_id(index) for index in range(CUSTOMER_COUNT)),
    "hot": (HOT_CUSTOMER,),
    "big": (BIG_CUSTOMER,),
}


@dataclass(frozen=True)
class Scenario:
    """One wrk run against the service, and the raw-limit work it is compared with."""

    name: str  # S1 … S7, or warm-up
    title: str
    connections: int
    raw_work: str  # the RawSpec.work it is compared with
    script: str = "adjust.lua"  # the wrk script in bench/
    customers: str = "random"  # which list of ID_LISTS
    history: bool = False  # adjust.lua's `history` argument: ?include_history=true
    # What the ledger check expects each 2xx answer to have recorded (0: a read).
    adjustments_per_request: int = 1
    # balance.lua's query: ?as_of=<the middle of the big customer's history> (S7).
    as_of: bool = False
    timeout_s: int = WRK_TIMEOUT_S  # a request not answered by then counts as a socket error
    # S8: the events the load commits are awaited at the webhook receiver and on NATS.
    events: bool = False


def s1(connections: int) -> Scenario:
    return Scenario("S1", "adjust, random of 1,000", connections, "adjust")


def s2(connections: int) -> Scenario:
    return Scenario(
        "S2", "adjust + history, random of 1,000", connections, "adjust_history", history=True
    )


S3 = Scenario("S3", "adjust, one hot customer", MANY, "adjust_hot", customers="hot")
S4 = Scenario(
    "S4",
    "GET balance, random of 1,000",
    MANY,
    "balance",
    script="balance.lua",
    adjustments_per_request=0,
)
# S5: the same work on a fresh database and on one with 5,000,000 prior adjustments.
S5_SCENARIOS = (
    Scenario("S5", "adjust, the big customer", 1, "adjust", customers="big"),
    Scenario(
        "S5",
        "adjust + history, the big customer",
        1,
        "adjust_history",
        customers="big",
        history=True,
    ),
    Scenario("S5", "adjust, random of 1,000", MANY, "adjust"),
    Scenario("S5", "adjust + history, random of 1,000", MANY, "adjust_history", history=True),
)
# S6: bulk-adjust, 1,000 items (not atomic) on random customers, a few connections at once.
S6_CONNECTIONS = 4
S6 = Scenario(
    "S6",
    f"bulk-adjust, {BULK_ITEMS:,} items on random of 1,000",
    S6_CONNECTIONS,
    "adjust_bulk",
    script="bulk.lua",
    adjustments_per_request=BULK_ITEMS,
    # 4 bulks of 1,000 queue for the ledger's writer: on SQLite under load each waited 5-7 s.
    timeout_s=60,
)
# S7: a balance at a point in the middle of the big customer's history, on a fresh database
# (the main phase's, first thing after the warm-up, when the big customer has S7_FEW
# adjustments) and on a bulk-loaded one where it has 1,000,000 (S5's; without S5, S7_LOAD's
# or with --quick S7_QUICK_LOAD's); one connection: latency, not queueing. No raw limit: it
# is compared with itself.
S7 = Scenario(
    "S7",
    "GET balance as_of, the big customer",
    1,
    "as_of",
    script="balance.lua",
    customers="big",
    adjustments_per_request=0,
    as_of=True,
)
# S8: S1 at 64 connections on a server publishing its events to NATS and delivering them
# to one webhook endpoint (its own phase: the server starts with LOYALTY_NATS_URL set).
S8 = Scenario("S8", "adjust, random of 1,000, webhook + NATS", MANY, "adjust", events=True)
WARMUP = Scenario("warm-up", "adjust, random of 1,000", WARMUP_CONNECTIONS, "adjust")

# S7 first: the main phase's database is still fresh then.
FULL_MAIN = (
    S7,
    *(s1(c) for c in CONNECTION_COUNTS),
    *(s2(c) for c in CONNECTION_COUNTS),
    S3,
    S4,
    S6,
)
QUICK_MAIN = (S7, s1(MANY), S3, S4, S6)
SCENARIO_NAMES = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8")


@dataclass(frozen=True)
class RawSpec:
    """One raw-limit run: `work` by `clients` at once, straight on the database."""

    work: str  # adjust, adjust_history, adjust_hot, balance, adjust_bulk
    clients: int

    @property
    def customers(self) -> int:
        return 1 if self.work == "adjust_hot" else CUSTOMER_COUNT

    @property
    def script(self) -> str:
        """The pgbench script and sqlite_loop.py work: adjust_hot is adjust on one row."""
        return "adjust" if self.work == "adjust_hot" else self.work


FULL_RAW_SPECS = (
    *(RawSpec("adjust", c) for c in CONNECTION_COUNTS),
    *(RawSpec("adjust_history", c) for c in CONNECTION_COUNTS),
    RawSpec("adjust_hot", 1),  # one row's serial limit, for reference
    RawSpec("adjust_hot", MANY),
    RawSpec("balance", MANY),
    RawSpec("adjust_bulk", S6_CONNECTIONS),
)
QUICK_RAW_SPECS = (
    RawSpec("adjust", MANY),
    RawSpec("adjust_hot", MANY),
    RawSpec("adjust_bulk", S6_CONNECTIONS),
)
RAW_WARMUP = RawSpec("adjust", 1)


def raw_clients(database: str, connections: int) -> int:
    """The raw limit's client count that a scenario at `connections` is compared with."""
    # SQLite has one writer at a time: one loop is the most the file can do, so it is the
    # limit at every connection count.
    return 1 if database == "sqlite" else connections


def raw_specs(database: str, quick: bool, only: frozenset[str] | None = None) -> list[RawSpec]:
    """The raw limits to measure (with `only`: those its scenarios are compared with)."""
    specs = QUICK_RAW_SPECS if quick else FULL_RAW_SPECS
    if only is not None:
        kept = phases(quick, False, only)
        needed = {(s.raw_work, s.connections) for phase in kept for s in phase.scenarios}
        specs = tuple(spec for spec in specs if (spec.work, spec.clients) in needed)
    # Each distinct spec once, in the order of its first appearance.
    return list(dict.fromkeys(RawSpec(s.work, raw_clients(database, s.clients)) for s in specs))


def scenario_s(scenario: Scenario, quick: bool, duration_s: int) -> int:
    """How long `scenario` runs: --quick shortens S7 further (not S6, whose bulks can take
    seconds each)."""
    short = quick and scenario.name == "S7"
    return min(QUICK_SHORT_S, duration_s) if short else duration_s


def raw_s(spec: RawSpec, quick: bool, duration_s: int) -> int:
    """How long a raw limit runs: --quick shortens S6's (adjust_bulk) further."""
    short = quick and spec.work == "adjust_bulk"
    return min(QUICK_SHORT_S, duration_s) if short else duration_s


def warmup_s(quick: bool, duration_s: int) -> int:
    return min(QUICK_WARMUP_S if quick else WARMUP_S, duration_s)


MAIN_PHASE = "main"
S5_FRESH_PHASE = "s5-fresh"
S5_LOADED_PHASE = "s5-loaded"
S7_LOADED_PHASE = "s7-loaded"
S8_PHASE = "s8"

# bulk_load.py's plans: S5's 5,000,000 (1,000,000 for the big customer, 4,000 for each of the
# others); S7's for the big customer alone.
S5_LOAD = LoadPlan(big=1_000_000, per_other=4_000)
S7_LOAD = LoadPlan(big=1_000_000, per_other=0)
S7_QUICK_LOAD = LoadPlan(big=100_000, per_other=0)
S7_FEW = 10  # the big customer's adjustments in the main phase, made through the API


@dataclass(frozen=True)
class Phase:
    """A fresh database and server, the customers made through the API, then the scenarios."""

    name: str  # main, s5-fresh, s5-loaded: how the report names its rows
    scenarios: tuple[Scenario, ...]
    extra_customers: tuple[str, ...]  # made besides the 1,000 of ID_LISTS["random"]
    load: LoadPlan | None = None  # bulk_load.py's adjustments, before the scenarios
    seed_big: int = 0  # adjustments of the big customer made through the API first
    # S8: the server publishes to NATS, and a webhook endpoint at the receiver gets every event.
    integrations: bool = False


def phases(quick: bool, skip_s5: bool, only: frozenset[str] | None = None) -> list[Phase]:
    """The phases of a run; with `only`, just the named scenarios, and the phases that
    still have one."""
    main = Phase(
        MAIN_PHASE,
        QUICK_MAIN if quick else FULL_MAIN,
        (HOT_CUSTOMER, BIG_CUSTOMER),
        seed_big=S7_FEW,
    )
    # Right after the main phase, whose S1 at 64 connections it is compared with.
    s8 = Phase(S8_PHASE, (S8,), (), integrations=True)
    if quick or skip_s5 or (only is not None and "S5" not in only):
        # S7's long history on a database of its own, loaded for the big customer alone.
        load = S7_QUICK_LOAD if quick else S7_LOAD
        every = [main, s8, Phase(S7_LOADED_PHASE, (S7,), (BIG_CUSTOMER,), load=load)]
    else:
        every = [
            main,
            s8,
            Phase(S5_FRESH_PHASE, S5_SCENARIOS, (BIG_CUSTOMER,)),
            # S7 first, in the middle of the loaded history, before S5 adds to it.
            Phase(S5_LOADED_PHASE, (S7, *S5_SCENARIOS), (BIG_CUSTOMER,), load=S5_LOAD),
        ]
    if only is None:
        return every
    kept = (replace(p, scenarios=tuple(s for s in p.scenarios if s.name in only)) for p in every)
    return [phase for phase in kept if phase.scenarios]
