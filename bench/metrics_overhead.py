"""What recording the metrics costs one request: the time of `observe_request` (a counter and
a histogram in prometheus_client's multiprocess mode, as `loyalty serve` runs them), over
100,000 requests, five rounds, beside the same in memory. The best round is the cost on an
idle core; the median shows what a busy machine adds.

    .venv/bin/python bench/metrics_overhead.py

Each measurement runs in a fresh interpreter, because prometheus_client chooses its mode
when first imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

REQUESTS = 100_000
ROUNDS = 5
MEASURE = f"""
import time
from loyalty.metrics.instruments import MULTIPROCESS, observe_request
routes = ["/admin/loyalty/points/adjust", "/admin/loyalty/points/{{customer_id}}"]
for route in routes:  # the first request of each kind makes its children
    observe_request("POST", route, 200, 0.001)
rounds = []
for _ in range({ROUNDS}):
    started = time.perf_counter()
    for i in range({REQUESTS}):
        observe_request("POST", routes[i & 1], 200, 0.0012)
    rounds.append((time.perf_counter() - started) / {REQUESTS} * 1e6)
rounds.sort()
print(MULTIPROCESS, rounds[0], rounds[len(rounds) // 2])
"""


def measure(multiprocess_dir: str | None) -> tuple[str, float, float]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiprocess_dir
    out = subprocess.run(
        [sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], float(out[1]), float(out[2])


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        multiprocess, mp_best, mp_median = measure(directory)
    assert multiprocess == "True"
    memory, memory_best, memory_median = measure(None)
    assert memory == "False"
    print(f"per request, {ROUNDS} rounds of {REQUESTS:,} requests (best / median):")
    print(f"  multiprocess (loyalty serve): {mp_best:.2f} / {mp_median:.2f} µs")
    print(f"  in memory:                    {memory_best:.2f} / {memory_median:.2f} µs")


if __name__ == "__main__":
    main()
