"""`python -m bench._scale_worker --concurrency N --listen true|false --poll SECONDS`: one
procrastinate worker for bench/scale.py, on the database named by the environment variable
AUDITFLOW_SCALE_WORKER_DATABASE (a libpq connection string, kept off the command line).

The app and its one task live here, apart from the benchmark, so that a worker starts
without importing the servers' code; the benchmark defers through the same `procrastinate_app`.
The task is the procrastinate twin of the test plugin's `test_noop`: a sync function that
returns at once, run on a worker thread as a processor runs a procedure. It runs until SIGTERM,
on which procrastinate stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from procrastinate import App, PsycopgConnector

TASK = "scale_noop"  # the task's name, the same in the deferring and the working process
DATABASE = "AUDITFLOW_SCALE_WORKER_DATABASE"


def noop() -> dict[str, bool]:
    """The job: what `test_noop` does."""
    return {"ok": True}


def procrastinate_app(conninfo: str, connections: int) -> App:
    """An app on `conninfo` with a pool of `connections`, and the task registered."""
    app = App(connector=PsycopgConnector(conninfo=conninfo, min_size=connections, max_size=connections))
    app.task(name=TASK)(noop)
    return app


async def work(conninfo: str, concurrency: int, listen: bool, poll: float) -> None:
    # One connection per job in flight (its fetch and its finish); LISTEN has one of its own.
    app = procrastinate_app(conninfo, concurrency)
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, listen_notify=listen, fetch_job_polling_interval=poll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--listen", choices=("true", "false"), required=True)
    parser.add_argument("--poll", type=float, required=True, help="fetch_job_polling_interval, seconds")
    args = parser.parse_args()
    asyncio.run(work(os.environ[DATABASE], args.concurrency, args.listen == "true", args.poll))


if __name__ == "__main__":
    # Run as `bench._scale_worker`, not as `__main__`, where procrastinate warns that an app's
    # tasks may not be found by another process (ours has a name of its own, the same everywhere).
    from bench import _scale_worker

    _scale_worker.main()
