"""What a full garbage collection costs a server, with and without its start-up objects
frozen out of the collector (`auditflow/heap.py`).

Imports both services and builds a gateway and a processor (not started: their objects, the
generated messages, SQLAlchemy's tables and gRPC's handlers are what a server holds from
start-up) and `--live` small objects made while serving (in-memory logs, calls in flight), then
times `gc.collect()` `--repeat` times before and after `freeze_start_up()`, the objects made
while serving made again after the freeze (the collector still walks those).
A full collection runs on whichever thread allocates when it falls due: in a server, often
the event loop, which answers nobody meanwhile.

    python bench/heap.py
    python bench/heap.py --quick      # 3 collections each way, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from auditflow.heap import freeze_start_up  # noqa: E402
from gateway import server as gateway_server  # noqa: E402
from gateway import settings as gateway_settings  # noqa: E402
from processor import server as processor_server  # noqa: E402
from processor import settings as processor_settings  # noqa: E402
from tests.support import auth  # noqa: E402


def full_collections(repeat: int) -> dict[str, float]:
    took = []
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        took.append(time.perf_counter() - started)
    return {"median_ms": statistics.median(took) * 1000, "max_ms": max(took) * 1000, "tracked": len(gc.get_objects())}


def serving_objects(live: int) -> list[dict[str, Any]]:
    return [{"n": n, "tags": [n]} for n in range(live)]


def run(repeat: int, live: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="auditflow-heap-") as tmp:
        data = Path(tmp)
        gateway = gateway_server.create_server(
            "127.0.0.1:0",
            gateway_settings.parse(["--database-url", f"sqlite:///{data}/g.db", *auth.gateway_args()]),
        )
        processor = processor_server.create_server(
            "127.0.0.1:0",
            processor_settings.parse(["--database-url", f"sqlite:///{data}/p.db", *auth.processor_args()]),
        )
        serving = serving_objects(live)
        before = full_collections(repeat)
        del serving
        frozen = freeze_start_up()
        serving = serving_objects(live)
        after = full_collections(repeat)
        gc.unfreeze()
        del gateway, processor, serving
    return {
        "frozen_objects": frozen,
        "full_collection": {"as started": before, "start-up frozen": after},
        "ratio": before["median_ms"] / after["median_ms"],
        "load_average": list(os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="full collections timed each way")
    parser.add_argument("--live", type=int, default=10_000, help="objects made while serving (each way)")
    parser.add_argument("--quick", action="store_true", help="3 collections each way (smoke test)")
    parser.add_argument("--json", action="store_true", help="(the figures are always printed as JSON)")
    args = parser.parse_args()
    if args.quick:
        args.repeat = 3
    print(json.dumps(run(args.repeat, args.live), indent=2))


if __name__ == "__main__":
    main()
