"""The ``starburst`` command: start, inspect and stop a cluster.

    starburst up [--num-cpus N] [--port P]   start a head (and its local node) that stays up
    starburst status [--json]                 what the running head is doing
    starburst down [--all]                    stop the running head, its nodes and executors
                                              (--all: and every starburst task on Fargate, by tag)
    starburst run script.py [args]            run an unmodified Ray script ('import ray' works)
    starburst setup | teardown | cost | quota  prepare an AWS account / price a Fargate cluster

Exit codes: 0 success; 1 the command failed; 2 bad usage; 3 no cluster is running (status/down).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import config
from ._version import __version__
from .head import process

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def _status(address: str):
    import grpc

    from ._proto import starburst_pb2 as pb
    from ._proto import starburst_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        return pb_grpc.HeadStub(channel).Status(pb.StatusRequest(), timeout=10)


def cmd_up(args: argparse.Namespace) -> int:
    with process.head_lock():
        running = process.find_head()
        if running is not None:
            print(f"starburst is already running at {running.address} (pid {running.pid}); "
                  "'starburst down' stops it.")
            return 0
        info = process.start_head(args.num_cpus, exit_when_unused=False, port=args.port)
    print(f"starburst head running at {info.address} (pid {info.pid})")
    print("  drivers on this machine find it with starburst.init(); stop it with 'starburst down'")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = process.find_head()
    if info is None:
        print("no starburst cluster is running (start one with 'starburst up')", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        st = _status(info.address)
    except Exception as exc:  # noqa: BLE001 - any RPC failure means we can't tell
        print(f"the head at {info.address} (pid {info.pid}) does not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    total_cpus = sum(n.resources.cpus for n in st.nodes)
    used = sum(n.cpus_in_use for n in st.nodes)
    if args.json:
        print(json.dumps({
            "address": info.address, "pid": st.pid, "version": st.head_version, "uptime_s": st.uptime_s,
            "drivers": st.sessions, "queued": st.queued, "running": st.running,
            "tasks_finished": st.tasks_finished, "objects": st.objects, "object_bytes": st.object_bytes,
            "store": st.store_url,
            "nodes": [{"id": n.node_id, "address": n.address, "cpus": n.resources.cpus,
                       "cpus_in_use": n.cpus_in_use, "running": n.running, "executors": n.executors,
                       "pid": n.pid} for n in st.nodes],
        }))
        return 0
    print(f"starburst {st.head_version} at {info.address} (pid {st.pid}), up {_duration(st.uptime_s)}")
    print(f"  drivers {st.sessions}   tasks: {st.running} running, {st.queued} queued, "
          f"{st.tasks_finished} finished")
    print(f"  objects {st.objects} ({_size(st.object_bytes)}) in {st.store_url}")
    print(f"  nodes {len(st.nodes)}   CPUs {used:g}/{total_cpus:g} in use")
    for n in st.nodes:
        print(f"    {n.node_id:<12} {n.address:<22} {n.resources.cpus:g} CPUs, {n.running} tasks, "
              f"{n.executors} executors, pid {n.pid}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    info = process.find_head()
    if args.all:
        return _down_all(args, info)
    if info is None:
        print("no starburst cluster is running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if process.stop_head(info, timeout=args.timeout):
        print(f"stopped the starburst head (pid {info.pid}) and its nodes")
        return 0
    print(f"the head (pid {info.pid}) did not stop within {args.timeout:g} s", file=sys.stderr)
    return EXIT_FAILED


def _aws_settings(args: argparse.Namespace):
    from .aws.resources import Settings

    settings = Settings.load()
    if getattr(args, "region", None):
        settings.region = args.region
    return settings


def cmd_setup(args: argparse.Namespace) -> int:
    import boto3

    from .aws.resources import AwsSetupError, setup

    settings = _aws_settings(args)
    try:
        report = setup(boto3.Session(region_name=settings.region), settings, head_ip=args.head_ip)
    except AwsSetupError as exc:
        print(f"starburst setup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format(policies=args.show_policies))
    path = report.settings.save()
    print(f"settings saved in {path}")
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    import boto3

    from .aws.resources import AwsSetupError, teardown

    settings = _aws_settings(args)
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Remove every starburst resource in {settings.region} (bucket and objects included)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return EXIT_FAILED
    try:
        report = teardown(boto3.Session(region_name=settings.region), settings)
    except AwsSetupError as exc:
        print(f"starburst teardown: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format())
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from .aws.pricing import describe_estimate
    from .aws.sizes import validate_size

    try:
        units, mib = validate_size(args.cpu, args.memory, args.arch)
    except ValueError as exc:
        print(f"starburst cost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    region = args.region or _aws_settings(args).region
    print(describe_estimate(args.workers, units / 1024, mib / 1024, args.arch, args.spot, region, args.max_cost))
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    from .aws.quotas import ServiceQuotasSource, quota_status

    settings = _aws_settings(args)
    source = ServiceQuotasSource(region=settings.region)
    try:
        for spot in (False, True):
            print(quota_status(source, spot).text())
    except Exception as exc:  # noqa: BLE001 - botocore errors: say what failed
        print(f"starburst quota: could not read the Fargate quotas in {settings.region}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .compat import main_run

    return main_run([args.script, *args.args])


def _down_all(args: argparse.Namespace, info) -> int:
    """The laptop died or a head crashed: stop the local head, and every starburst task on Fargate
    found by its tags (in the region of 'starburst setup')."""
    code = 0
    if info is not None:
        stopped = process.stop_head(info, timeout=args.timeout)
        print(f"local head (pid {info.pid}): {'stopped' if stopped else 'did not stop'}")
        code = 0 if stopped else EXIT_FAILED
    else:
        print("local head: none running")
    from .aws.resources import Settings

    if not Settings.path().exists() and not args.region:
        print("AWS: not set up on this machine ('starburst setup'); nothing to look for")
        return code
    import boto3

    from .aws.launcher import stop_orphans

    settings = _aws_settings(args)
    try:
        arns = stop_orphans(boto3.Session(region_name=settings.region), settings)
    except Exception as exc:  # noqa: BLE001 - credentials, permissions, network: say which
        print(f"AWS ({settings.region}): could not look for starburst tasks: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"AWS ({settings.region}): stopped {len(arns)} starburst task(s)")
    return code


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starburst", description="Run Ray Core code on a local cluster (and soon on AWS Fargate).",
        epilog=f"State lives in {config.home()} (set STARBURST_HOME to change it).",
    )
    parser.add_argument("--version", action="version", version=f"starburst {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    up = sub.add_parser("up", help="start a local cluster that stays up until 'starburst down'",
                        description="Start a head and a local node. Drivers' init() finds and reuses it, "
                                    "so warm workers survive a notebook restart.")
    up.add_argument("--num-cpus", type=float, default=None, help="executors to run (default: all CPUs)")
    up.add_argument("--port", type=int, default=0, help="port for drivers (default: any free port)")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show the running cluster: nodes, tasks, objects",
                            description="Show the running cluster. Exit code 3 when none is running.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop the running cluster and everything it started",
                          description="Stop the head, its nodes and their executors. Exit code 3 when "
                                      "none is running.")
    down.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for it to exit")
    down.add_argument("--all", action="store_true",
                      help="also stop every starburst task on Fargate, found by tag (after a crash)")
    down.add_argument("--region", help="with --all: the AWS region (default: that of 'starburst setup')")
    down.set_defaults(func=cmd_down)
    run = sub.add_parser("run", help="run an unmodified Ray script on starburst ('import ray' works)",
                         description="Run SCRIPT as __main__ with 'import ray' mapped to starburst, in this "
                                     "process and in the cluster's workers. Exit code: the script's.")
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    run.set_defaults(func=cmd_run)

    aws = "AWS (the Fargate backend is being built: these prepare an account and price a cluster)"
    setup = sub.add_parser("setup", help=f"create starburst's resources in your AWS account [{aws}]",
                           description="Create or find, idempotently: a private encrypted S3 bucket with a "
                                       "lifecycle rule, an ECR repository, an ECS cluster with FARGATE and "
                                       "FARGATE_SPOT, least-privilege IAM roles, a log group, and a security "
                                       "group admitting only the head's address. Everything is tagged.")
    setup.add_argument("--region", help="AWS region (default: saved setting, then AWS_REGION)")
    setup.add_argument("--head-ip", help="public address of this machine, admitted on the node port")
    setup.add_argument("--show-policies", action="store_true", help="print the IAM policy documents")
    setup.set_defaults(func=cmd_setup)
    teardown = sub.add_parser("teardown", help="remove everything 'starburst setup' created",
                              description="Remove starburst's AWS resources (the bucket and its objects "
                                          "included). Resources not tagged as starburst's are left alone.")
    teardown.add_argument("--region")
    teardown.add_argument("--yes", action="store_true", help="don't ask for confirmation")
    teardown.set_defaults(func=cmd_teardown)
    cost = sub.add_parser("cost", help="estimate what a Fargate cluster costs per hour",
                          description="Price a cluster from the built-in table (per-second billing, "
                                      "1-minute minimum). Exit code 2 for a size Fargate doesn't offer.")
    cost.add_argument("--workers", type=int, default=1)
    cost.add_argument("--cpu", default="1", help="vCPU per worker (0.25 to 16)")
    cost.add_argument("--memory", default="2GB", help="memory per worker, e.g. 8GB")
    cost.add_argument("--arch", default="x86_64", choices=["x86_64", "arm64"])
    cost.add_argument("--spot", action="store_true")
    cost.add_argument("--region")
    cost.add_argument("--max-cost", type=float, help="budget in USD: how long it lasts")
    cost.set_defaults(func=cmd_cost)
    quota = sub.add_parser("quota", help="show the Fargate vCPU quotas and any pending increase request")
    quota.add_argument("--region")
    quota.set_defaults(func=cmd_quota)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it doesn't dump a traceback
        print(f"starburst {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
