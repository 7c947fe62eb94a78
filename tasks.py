#!/usr/bin/env python3
"""auditflow's developer tasks. Needs only Python 3.11, 3.12 or 3.13 (and node/npm for buf).

    python3 tasks.py demo [ARGS]   start both servers, run the sample plan end to end, stop them
    python3 tasks.py test [ARGS]   the whole pytest suite (ARGS go to pytest)
    python3 tasks.py lint          ruff check, ruff format --check, mypy, buf lint, stale stubs
    python3 tasks.py gen           regenerate the gRPC stubs from protos/
    python3 tasks.py bench [ARGS]  run bench/*.py (ARGS go to each script)
    python3 tasks.py lock          rewrite constraints.txt: the newest versions pyproject.toml admits
    python3 tasks.py compose-check the compose stack on a real Docker engine, end to end (minutes)

Every task first makes sure `.venv` exists and holds the project, installed with the exact
versions of constraints.txt (`pip install -c constraints.txt -e '.[dev]'`, repeated only when
pyproject.toml or constraints.txt changed). The environment is made with the Python that runs
tasks.py; AUDITFLOW_VENV names another directory for it (one per Python version, say).
`lint` and `test` also install the pinned buf with `npm ci` when node_modules/.bin/buf is
missing, and `test` installs Debian's chromium (for the browser test) and docker-compose (to
validate docker-compose.yml) packages when they are missing. The exit code is the task's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / os.environ.get("AUDITFLOW_VENV", ".venv")
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".auditflow-installed"
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "constraints.txt"
BUF = ROOT / "node_modules" / ".bin" / "buf"
CHROMIUM = Path("/usr/bin/chromium")
DOCKER_COMPOSE = Path("/usr/bin/docker-compose")
OLDEST_PYTHON = (3, 11)
PYTEST_NO_TESTS = 5


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fail(text: str, code: int = 1) -> int:
    print(f"tasks.py: {text}", file=sys.stderr, flush=True)
    return code


def run(command: Sequence[str | Path], *, env: dict[str, str] | None = None) -> int:
    """Run a command in the repository and return its exit code.

    Ctrl-C reaches the child too (same process group): we wait for it to finish rather
    than leave it behind.
    """
    print("$ " + " ".join(_shown(c) for c in command), flush=True)
    try:
        process = subprocess.Popen([str(c) for c in command], cwd=ROOT, env=env or tool_env())
    except OSError as exc:
        return fail(f"cannot run {command[0]}: {exc}", 127)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _shown(part: str | Path) -> str:
    if isinstance(part, Path) and part.is_relative_to(ROOT):
        return str(part.relative_to(ROOT))
    return str(part)


def tool_env() -> dict[str, str]:
    """The environment for tools: the venv's and node_modules' programs first on PATH."""
    env = dict(os.environ)
    path = [str(BIN), str(BUF.parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(p for p in path if p)
    env["VIRTUAL_ENV"] = str(VENV)
    env.pop("PYTHONHOME", None)
    return env


# --- set-up ----------------------------------------------------------------------------------


def python_for_venv() -> str | None:
    """This interpreter when it is new enough, else python3.11 on PATH."""
    if sys.version_info[:2] >= OLDEST_PYTHON:
        return sys.executable
    return shutil.which("python{}.{}".format(*OLDEST_PYTHON))


def venv_version_ok() -> bool:
    try:
        out = subprocess.run(
            [str(PYTHON), "-c", f"import sys; print(sys.version_info[:2] >= {OLDEST_PYTHON})"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return False
    return out.stdout.strip() == "True"


def install_digest() -> str:
    """What the installed environment depends on: the project's ranges and the exact versions."""
    return hashlib.sha256(PYPROJECT.read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()


def ensure_venv() -> int:
    """Create .venv if missing; install the project with the locked versions when pyproject.toml
    or constraints.txt changed since the last install."""
    oldest = "{}.{}".format(*OLDEST_PYTHON)
    if PYTHON.exists() and not venv_version_ok():
        return fail(f"{VENV} exists but is not a working Python {oldest}+ environment: remove it and retry", 2)
    if not PYTHON.exists():
        interpreter = python_for_venv()
        if interpreter is None:
            return fail(f"Python {oldest} or newer is required: run tasks.py with it", 2)
        say(f"creating {VENV.name} with {interpreter}")
        code = run([interpreter, "-m", "venv", VENV])
        if code:
            return fail(f"creating {VENV.name} failed", code)
    digest = install_digest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return 0
    say(f"installing the project into {VENV.name} (pyproject.toml or constraints.txt changed since the last install)")
    STAMP.unlink(missing_ok=True)
    code = run([PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-c", CONSTRAINTS, "-e", ".[dev]"])
    if code:
        return fail("pip install -c constraints.txt -e '.[dev]' failed", code)
    STAMP.write_text(digest + "\n")
    return 0


def ensure_buf() -> int:
    """Install the pinned buf (package.json / package-lock.json) with `npm ci` if missing."""
    if BUF.exists():
        return 0
    npm = shutil.which("npm")
    if npm is None:
        return fail("buf is missing and npm is not installed: install Node.js (npm), then retry", 2)
    say("installing buf with npm ci (pinned in package-lock.json)")
    code = run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"])
    if code or not BUF.exists():
        return fail("npm ci did not install node_modules/.bin/buf", code or 1)
    return 0


APT_LOCK_WAIT = 600  # seconds apt-get waits for dpkg's lock held by another apt run


def ensure_debian_package(program: Path, package: str, why: str) -> int:
    """Install a Debian package with apt when `program` is missing and we may (root)."""
    if program.exists():
        return 0
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return fail(f"{program} is missing: install Debian's {package} package (apt-get install {package})", 2)
    say(f"installing {package} {why} (Debian package {package})")
    env = {**tool_env(), "DEBIAN_FRONTEND": "noninteractive"}
    # (another apt run, such as a second checkout's set-up or unattended upgrades, holds
    # dpkg's lock for a while: wait for it rather than fail)
    wait = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT}"]
    code = run([apt, *wait, "update", "-qq"], env=env) or run([apt, *wait, "install", "-y", "-qq", package], env=env)
    if code or not program.exists():
        return fail(f"apt-get did not install {program}", code or 1)
    return 0


def ensure_test_tools() -> int:
    """The browser test drives Debian's Chromium (never a downloaded browser); the compose
    test validates docker-compose.yml with Debian's docker-compose (no Docker engine needed)."""
    return ensure_debian_package(CHROMIUM, "chromium", "for the browser test") or ensure_debian_package(
        DOCKER_COMPOSE, "docker-compose", "to validate docker-compose.yml"
    )


def set_up(*, buf: bool = False, browser: bool = False) -> int:
    return ensure_venv() or (ensure_buf() if buf else 0) or (ensure_test_tools() if browser else 0)


# --- tasks -----------------------------------------------------------------------------------


def task_demo(args: list[str]) -> int:
    """start both servers, run the sample plan end to end, stop them"""
    return set_up() or run([BIN / "auditflow", "demo", *args])


def task_test(args: list[str]) -> int:
    """run the whole pytest suite (extra arguments go to pytest)"""
    code = set_up(buf=True, browser=True)
    if code:
        return code
    say("pytest")
    code = run([PYTHON, "-m", "pytest", *args])
    if code == PYTEST_NO_TESTS:
        return fail("pytest collected no tests: that is a failure", code)
    return code


def task_lint(args: list[str]) -> int:
    """ruff check, ruff format --check, mypy, buf lint, generated stubs up to date"""
    if args:
        return fail(f"lint takes no arguments (got: {' '.join(args)})", 2)
    code = set_up(buf=True)
    if code:
        return code
    checks: list[tuple[str, list[str | Path]]] = [
        ("ruff check", [BIN / "ruff", "check", "."]),
        ("ruff format --check", [BIN / "ruff", "format", "--check", "."]),
        ("mypy", [BIN / "mypy"]),
        ("buf lint", [BUF, "lint"]),
        ("generated stubs", [PYTHON, "tools/genprotos.py", "--check"]),
    ]
    failed = []
    for name, command in checks:
        say(name)
        if run(command):
            failed.append(name)
    if failed:
        return fail("lint failed: " + ", ".join(failed))
    say("lint passed")
    return 0


def task_gen(args: list[str]) -> int:
    """regenerate the Python gRPC stubs (with type stubs) from protos/"""
    return set_up() or run([PYTHON, "tools/genprotos.py", *args])


def task_bench(args: list[str]) -> int:
    """run bench/*.py if present (extra arguments go to each script)"""
    code = set_up()
    if code:
        return code
    scripts = sorted((ROOT / "bench").glob("*.py"))
    scripts = [s for s in scripts if not s.name.startswith("_")]
    if not scripts:
        print("no benchmarks in bench/")
        return 0
    worst = 0
    for script in scripts:
        say(f"bench/{script.name}")
        worst = max(worst, run([PYTHON, script, *args]))
    return worst


def task_compose_check(args: list[str]) -> int:
    """the compose stack on a real Docker engine, end to end (not part of `test`)"""
    return set_up() or run([PYTHON, "tools/compose_check.py", *args])


LOCK_HEADER = """\
# Exact versions for reproducible installs of auditflow and its extras ("postgres", "dev").
# pyproject.toml declares compatible ranges; this file fixes the versions tested together on
# Python 3.11, 3.12 and 3.13. tasks.py and the Dockerfile install with it:
#
#   pip install -c constraints.txt -e '.[dev]'
#
# `python3 tasks.py lock` rewrites it from a fresh environment (the newest versions the ranges
# admit); then run the tests on each supported Python before committing it.
"""


def task_lock(args: list[str]) -> int:
    """rewrite constraints.txt with the newest versions pyproject.toml admits"""
    if args:
        return fail(f"lock takes no arguments (got: {' '.join(args)})", 2)
    with tempfile.TemporaryDirectory(prefix="auditflow-lock-") as scratch:
        python = Path(scratch) / "bin" / "python"
        say("resolving the newest versions in a fresh environment")
        code = run([sys.executable, "-m", "venv", scratch]) or run(
            [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[dev,postgres]"]
        )
        if code:
            return fail("installing into a fresh environment failed", code)
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"],
            capture_output=True, text=True, check=True, cwd=ROOT,
        ).stdout  # fmt: skip
    pins = sorted((ln for ln in frozen.splitlines() if ln and not ln.startswith(("pip==", "-e", "#"))), key=str.lower)
    CONSTRAINTS.write_text(LOCK_HEADER + "\n".join(pins) + "\n")
    say(f"wrote {len(pins)} exact versions to {CONSTRAINTS.name}")
    return 0


TASKS: dict[str, Callable[[list[str]], int]] = {
    "demo": task_demo,
    "test": task_test,
    "lint": task_lint,
    "gen": task_gen,
    "bench": task_bench,
    "lock": task_lock,
    "compose-check": task_compose_check,
}


def usage() -> str:
    lines = ["usage: python3 tasks.py TASK [ARGS...]", "", "tasks:"]
    lines += [f"  {name:<13} {func.__doc__}" for name, func in TASKS.items()]
    lines += ["", (__doc__ or "").strip().split("\n\n", 2)[-1]]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, *args = argv
    task = TASKS.get(name)
    if task is None:
        print(usage(), file=sys.stderr)
        return fail(f"unknown task {name!r}", 2)
    os.chdir(ROOT)
    return task(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
