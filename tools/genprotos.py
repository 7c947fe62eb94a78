"""Regenerate the Python stubs (with mypy-protobuf type stubs) from protos/.

    python tools/genprotos.py          # rewrite auditflow/v1/*_pb2*.py(i)
    python tools/genprotos.py --check  # exit 1 if the committed stubs are stale (CI)

Only our own package is generated: google/api/*.proto are vendored for buf and protoc, but
their Python modules come from googleapis-common-protos.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = "auditflow/v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    """Run protoc with the python, grpc and mypy plugins into out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    target = ROOT / PACKAGE_DIR
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = generated_files(Path(tmp) / PACKAGE_DIR)
        current = generated_files(target)
        stale = sorted(
            name
            for name in fresh.keys() | current.keys()
            if name not in fresh or name not in current or not filecmp.cmp(fresh[name], current[name], shallow=False)
        )
        if args.check:
            if stale:
                print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
                print("run: python tools/genprotos.py", file=sys.stderr)
                return 1
            print("generated stubs are up to date")
            return 0
        for name in current.keys() - fresh.keys():
            current[name].unlink()
        for name, path in fresh.items():
            shutil.copyfile(path, target / name)
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR}/ ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
