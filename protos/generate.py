"""Regenerate the committed gRPC/protobuf code from protos/starburst.proto.

    python protos/generate.py            # writes starburst/_proto/
    python protos/generate.py --out DIR  # writes DIR/starburst/_proto/ (the staleness test uses this)
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ("starburst_pb2.py", "starburst_pb2.pyi", "starburst_pb2_grpc.py")


def generate(out: pathlib.Path) -> pathlib.Path:
    from grpc_tools import protoc

    target = out / "starburst" / "_proto"
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-Istarburst/_proto={ROOT / 'protos'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / "protos" / "starburst.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT)
    target = generate(parser.parse_args().out)
    print(f"generated {', '.join(GENERATED)} in {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
