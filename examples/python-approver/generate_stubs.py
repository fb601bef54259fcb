#!/usr/bin/env python3
"""Generate the Python gRPC stubs of the daemon's API from the repository's proto/.

    python3 generate_stubs.py [--proto DIR] [OUT_DIR]

OUT_DIR defaults to gen/ beside this script, where approver.py looks for them. Needs
grpcio-tools (requirements.txt).
"""
import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
PROTO_FILE = "agent_supervisor/v1/supervisor.proto"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=pathlib.Path, default=HERE / "gen",
                        help="where the stubs go (default: %(default)s)")
    parser.add_argument("--proto", type=pathlib.Path, default=HERE.parent.parent / "proto",
                        help="the directory holding %s (default: %%(default)s)" % PROTO_FILE)
    args = parser.parse_args()
    if not (args.proto / PROTO_FILE).is_file():
        print(f"generate_stubs: {args.proto / PROTO_FILE} not found (give --proto DIR)",
              file=sys.stderr)
        return 2
    try:
        from grpc_tools import protoc
    except ImportError:
        print("generate_stubs: grpcio-tools is missing: pip install -r requirements.txt",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main([
        "protoc",
        f"-I{args.proto}",
        f"--python_out={args.out}",
        f"--grpc_python_out={args.out}",
        PROTO_FILE,
    ])
    if rc != 0:
        print(f"generate_stubs: protoc failed ({rc})", file=sys.stderr)
        return 1
    print(f"generate_stubs: stubs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
