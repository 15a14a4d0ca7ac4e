"""The ``starburst`` command: start, inspect and stop a cluster.

    starburst up [--num-cpus N] [--port P]   start a head (and its local node) that stays up
    starburst status [--json] [--watch]       what the running head is doing (and its dashboard)
    starburst logs [JOB] [--task NAME] [--follow] [--errors]   a job's task output, kept by the head
    starburst down [--all [--yes]]            stop the running head, its nodes and executors
                                              (--all: and every starburst task on Fargate, by tag)
    starburst run script.py [args]            run an unmodified Ray script ('import ray' works)
    starburst setup [--plan] | teardown [--yes] | cost | quota
                                              prepare an AWS account / price a Fargate cluster
    starburst env [--build | --rebuild] [--json]  the worker environment: spec, hash, image
    starburst doctor [--json]                 check the AWS account end to end (one tiny task, <= 1 cent)

Exit codes: 0 success; 1 the command failed; 2 bad usage (one line), or a destructive command
without --yes and without a terminal to ask at; 3 no cluster is running (status/down).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import config
from ._version import __version__
from .driver import process

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def _positive_cpus(text: str) -> float:
    """``--num-cpus``: the rule and message of ``init(num_cpus=...)``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"num_cpus must be a positive number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; 0: any free port)")
    return value


def _workers(text: str) -> int | tuple[int, ...]:
    """``--workers N`` or ``MIN,MAX``, for check_options (which says what is wrong with the numbers)."""
    try:
        return tuple(int(w) for w in text.split(",")) if "," in text else int(text)
    except ValueError:
        raise ValueError(f"--workers {text!r}: give a number, or MIN,MAX") from None


def _aws_message(exc: BaseException) -> str:
    """One message for missing credentials, whichever AWS call found them missing."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    from .aws.context import NO_CREDENTIALS

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)) or NO_CREDENTIALS in str(exc):
        return NO_CREDENTIALS
    return str(exc)


def cmd_up(args: argparse.Namespace) -> int:
    config_file = cluster_id = ""
    with process.head_lock():
        running = process.find_head()
        if running is not None and args.cluster == "fargate" and running.provider != "fargate":
            print(f"starburst up: a local cluster is running at {running.address} (pid {running.pid}); "
                  "stop it with 'starburst down' before starting a Fargate cluster", file=sys.stderr)
            return EXIT_FAILED
        if running is not None:
            print(f"starburst is already running at {running.address} (pid {running.pid}); "
                  "'starburst down' stops it.")
            return 0
        if args.cluster == "fargate":
            from .api import _prepare_fargate
            from .aws.cluster import check_options
            from .aws.pricing import UnknownRegionError

            try:
                options = check_options(
                    workers=_workers(args.workers), cpu=args.cpu, memory=args.memory, arch=args.arch, spot=args.spot,
                    idle_timeout=args.idle_timeout, max_cost=args.max_cost, region=args.region,
                    image=args.image, lease=args.lease, local=args.local, burst=args.burst,
                    max_wait=args.max_wait)
            except (TypeError, ValueError) as exc:
                print(f"starburst up: {exc}", file=sys.stderr)
                return EXIT_USAGE
            try:
                config_file, cluster_id = _prepare_fargate(options, args.auto_quota_request or None)
            except (RuntimeError, ValueError) as exc:
                print(f"starburst up: {exc}", file=sys.stderr)
                return EXIT_USAGE if isinstance(exc, UnknownRegionError) else EXIT_FAILED
        try:
            listen = args.listen or (f"127.0.0.1:{args.port}" if args.port else "")
            info = process.start_head(args.num_cpus, exit_when_unused=False, listen=listen,
                                      cluster_config=config_file, cluster_id=cluster_id)
        except RuntimeError as exc:
            print(f"starburst up: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        print(f"starburst head running at {info.address} (pid {info.pid})")
        if config_file:
            print(f"  Fargate cluster {info.cluster_id}: nodes join as they start ('starburst status' shows them)")
        print("  drivers on this machine find it with starburst.init(); stop it with 'starburst down'")
        if info.listen:
            print(f"  drivers elsewhere: starburst.init(address=...) or STARBURST_ADDRESS={info.listen} "
                  "(the part before @ is a secret: anyone with it can run code as you)")
    except KeyboardInterrupt:  # interrupted before it said it was up: then it isn't
        process.stop_head(info, timeout=30.0)
        raise
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if getattr(args, "watch", False):
        return _watch_status(args)
    info = process.find_head()
    if info is None:
        if args.json:
            print(json.dumps({"running": False}))
        print("no starburst cluster is running (start one with 'starburst up')", file=sys.stderr)
        return EXIT_NOT_RUNNING
    try:
        st = process.status_reply(info.address, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any RPC failure means we can't tell
        print(f"the head at {info.address} (pid {info.pid}) does not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    total_cpus = sum(n.resources.cpus for n in st.nodes)
    used = sum(n.cpus_in_use for n in st.nodes)
    if args.json:
        print(json.dumps({
            "running": True, "dashboard": _dashboard_url(info.address),
            "address": info.address, "pid": st.pid, "version": st.head_version, "uptime_s": st.uptime_s,
            "drivers": st.sessions, "queued": st.queued, "tasks_running": st.running,
            "tasks_finished": st.tasks_finished, "tasks_failed": st.tasks_failed,
            "tasks_cancelled": st.tasks_cancelled, "objects": st.objects, "object_bytes": st.object_bytes,
            "store": st.store_url,
            "cluster": {"provider": st.cluster.provider, "cluster_id": st.cluster.cluster_id,
                        "region": st.cluster.region, "nodes_pending": st.cluster.nodes_pending,
                        "workers": [st.cluster.workers_min, st.cluster.workers_max],
                        "node_size": st.cluster.node_size, "cost_usd": st.cluster.cost_usd,
                        "cost_per_hour": st.cluster.cost_per_hour, "max_cost": st.cluster.max_cost or None,
                        "message": st.cluster.message,
                        "hybrid": {"local_cpus": st.cluster.local_cpus, "burst": st.cluster.burst,
                                   "decision": st.cluster.burst_decision, "burst_nodes": st.cluster.burst_nodes,
                                   "tasks_local": st.cluster.tasks_local, "tasks_cloud": st.cluster.tasks_cloud}
                        if st.cluster.local_cpus else None},
            "nodes": [{"id": n.node_id, "address": n.address, "cpus": n.resources.cpus,
                       "cpus_in_use": n.cpus_in_use, "running": n.running, "queued": n.queued,
                       "executors": n.executors,
                       "pid": n.pid} for n in st.nodes],
        }))
        return 0
    print(f"starburst {st.head_version} at {info.address} (pid {st.pid}), up {_duration(st.uptime_s)}")
    print(f"  drivers {st.sessions}   tasks: {st.running} running, {st.queued} queued, "
          f"{st.tasks_finished - st.tasks_failed - st.tasks_cancelled} finished, {st.tasks_failed} failed, "
          f"{st.tasks_cancelled} cancelled")
    print(f"  objects {st.objects} ({_size(st.object_bytes)}) in {st.store_url}")
    dashboard = _dashboard_url(info.address)
    if dashboard:
        print(f"  dashboard {dashboard}")
    c = st.cluster
    if c.provider == "fargate":
        from .aws.pricing import format_cost

        budget = f" of max_cost {format_cost(c.max_cost)}" if c.max_cost else ""
        print(f"  Fargate {c.cluster_id} in {c.region}: workers {c.workers_min}-{c.workers_max} x {c.node_size}")
        print(f"  cost so far {format_cost(c.cost_usd)}{budget}, now {format_cost(c.cost_per_hour)}/hour")
        if c.local_cpus:
            print(f"  hybrid: {c.local_cpus:g} CPUs on this machine first; burst {c.burst}")
            print(f"  tasks run: {c.tasks_local:,} on this machine, {c.tasks_cloud:,} on Fargate")
            print(f"  burst decision: {c.burst_nodes} Fargate node(s): {c.burst_decision}")
        if c.message:
            print(f"  note: {c.message}")
    pending = f", {c.nodes_pending} starting" if c.nodes_pending else ""
    print(f"  nodes {len(st.nodes)}{pending}   CPUs {used:g}/{total_cpus:g} in use")
    id_width = max([12] + [len(n.node_id) for n in st.nodes])
    address_width = max([22] + [len(n.address) for n in st.nodes])
    for n in st.nodes:
        print(f"    {n.node_id:<{id_width}} {n.address:<{address_width}} {n.resources.cpus:g} CPUs, "
              f"{n.running} running, {n.queued} queued, {n.executors} executors, pid {n.pid}")
    return 0


def _dashboard_url(address: str) -> str:
    from .api import dashboard_url

    return dashboard_url(address)


def _watch_status(args: argparse.Namespace) -> int:
    """Redraw the status every ``--interval`` seconds until Ctrl-C."""
    import contextlib
    import io
    import time

    once = argparse.Namespace(**{**vars(args), "watch": False})
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                cmd_status(once)
            stamp = time.strftime("%H:%M:%S")
            sys.stdout.write(f"{clear}{buf.getvalue()}(every {args.interval:g} s, {stamp}; Ctrl-C to stop)\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from .head import joblog

    if args.node:
        return _node_logs(args)
    try:
        job = joblog.find_job(args.job)
    except LookupError as exc:
        print(f"starburst logs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.follow:
        # Identify the head once; then only watch its pid (find_head asks the head over its socket,
        # too much to repeat four times a second, and a slow answer would make it drop head.json).
        head = process.find_head()
        records = joblog.follow(job, stop=lambda: head is None or process.wait_exit(head.pid, 0.0))
    else:
        records = joblog.read(job)
    shown = 0
    try:
        for r in records:
            if args.task and r.get("task") != args.task and not str(r.get("task", "")).startswith(args.task + "."):
                continue
            if args.errors and r.get("k") == "out":
                continue
            sys.stdout.write(joblog.format_record(r))
            sys.stdout.flush()
            shown += 1
    except KeyboardInterrupt:
        return 0
    if not shown:
        what = "errors" if args.errors else "output"
        print(f"starburst logs: job {job} has no {what}" + (f" from task {args.task!r}" if args.task else ""),
              file=sys.stderr)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    info = process.find_head()
    if args.all:
        return _down_all(args, info)
    if info is None:
        print("no starburst cluster is running", file=sys.stderr)
        return EXIT_NOT_RUNNING
    timeout = args.timeout if args.timeout is not None else (180.0 if info.provider == "fargate" else 20.0)
    if process.stop_head(info, timeout=timeout):
        print(f"stopped the starburst head (pid {info.pid}) and its nodes")
        if info.provider == "fargate":
            from .aws.provider import read_report

            report = read_report(info.cluster_id)
            print(report.text() if report else "the Fargate cluster left no report: 'starburst down --all' "
                                               "stops any task it may have left")
        return 0
    print(f"the head (pid {info.pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return EXIT_FAILED


def _aws_settings(args: argparse.Namespace):
    from .aws.settings import Settings

    settings = Settings.load()
    if getattr(args, "region", None):
        settings.region = args.region
    return settings


def _confirm(command: str, question: str, args: argparse.Namespace) -> int | None:
    """None to go on: ``--yes`` was given, or a person at the terminal said yes. Without a terminal
    (a script, CI) a destructive command refuses: EXIT_USAGE with one line saying to pass --yes."""
    if args.yes:
        return None
    if not sys.stdin.isatty():
        print(f"starburst {command}: no terminal to confirm at; pass --yes to {question[0].lower()}"
              f"{question[1:].rstrip('?')}", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return None
    print("nothing done")
    return EXIT_FAILED


def cmd_setup(args: argparse.Namespace) -> int:
    import boto3

    from .aws.provision import WILL_REFUSE, plan, setup
    from .aws.settings import AwsSetupError

    settings = _aws_settings(args)
    if args.task_policy is not None:
        import dataclasses

        try:
            settings = dataclasses.replace(settings, task_policy_arns=[p for p in args.task_policy if p])
        except ValueError as exc:
            print(f"starburst setup: {exc}", file=sys.stderr)
            return EXIT_USAGE
    session = boto3.Session(region_name=settings.region)
    try:
        if args.plan or (sys.stdin.isatty() and not args.yes):
            the_plan = plan(session, settings, head_ip=args.head_ip)
            print(the_plan.format())
            if args.plan:
                return 0
            if the_plan.to_create() and not any(r.status == WILL_REFUSE for r in the_plan.resources):
                refused = _confirm("setup", f"Create these {len(the_plan.to_create())} resources in "
                                            f"{settings.region}?", args)
                if refused is not None:
                    return refused
        report = setup(session, settings, head_ip=args.head_ip)
    except AwsSetupError as exc:
        print(f"starburst setup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format(policies=args.show_policies))
    path = report.settings.save()
    print(f"settings saved in {path}")
    return 0


def cmd_teardown(args: argparse.Namespace) -> int:
    import boto3

    from .aws.provision import teardown
    from .aws.settings import AwsSetupError

    settings = _aws_settings(args)
    refused = _confirm("teardown", f"Remove every starburst resource in {settings.region} (bucket and "
                                   "objects included)?", args)
    if refused is not None:
        return refused
    try:
        report = teardown(boto3.Session(region_name=settings.region), settings)
    except AwsSetupError as exc:
        print(f"starburst teardown: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(report.format())
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from .aws.cluster import check_options
    from .aws.pricing import UnknownRegionError, describe_estimate, price_source

    try:  # the rules and messages of init(cluster="fargate") and 'up --cluster fargate'
        options = check_options(workers=_workers(args.workers), cpu=args.cpu, memory=args.memory, arch=args.arch,
                                spot=args.spot, max_cost=args.max_cost)
    except (TypeError, ValueError) as exc:
        print(f"starburst cost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    region = args.region or _aws_settings(args).region
    try:
        print(describe_estimate(options.workers_max, options.vcpu, options.memory_gb, options.arch, options.spot,
                                region, options.max_cost, source=price_source()))
    except UnknownRegionError as exc:
        print(f"starburst cost: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    from .aws.quotas import ServiceQuotasSource, quota_status

    settings = _aws_settings(args)
    source = ServiceQuotasSource(region=settings.region)
    try:
        for spot in (False, True):
            print(quota_status(source, spot).text())
    except Exception as exc:  # noqa: BLE001 - botocore errors: say what failed
        print(f"starburst quota: could not read the Fargate quotas in {settings.region}: {_aws_message(exc)}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .compat import main_run

    return main_run([args.script, *args.args])


def _travels(pkg) -> str:
    """How a package of the driver's environment reaches the workers."""
    if pkg.kind == "vcs":
        return f"pip installs it in the image from {pkg.vcs}+{pkg.url}@{pkg.commit[:12]}"
    if pkg.kind == "url":
        return f"pip installs it in the image from {pkg.url}"
    if pkg.kind == "installed":
        return "a wheel repacked from its installed files, in the image"
    if pkg.kind == "local":
        how = f"a wheel built from {pkg.path} when the image is built"
        if pkg.name == "starburst":
            how += " (later edits need 'starburst env --rebuild' or a new version)"
        elif pkg.editable:
            how += "; its modules also travel by value with each task, so edits reach the workers"
        return how
    return "pip installs the pinned version in the image"


def _env_aws(args: argparse.Namespace, spec, out: dict) -> int:
    """Fill ``out`` with the image's URI and whether it exists, building it on request."""
    from .aws.settings import AwsSetupError, Settings

    if not Settings.path().exists() and not args.region:
        out["aws"] = {"status": "not set up",
                      "message": "AWS is not set up on this machine: run 'starburst setup' first"}
        if args.build or args.rebuild:
            print(f"starburst env: can't build the image: {out['aws']['message']}", file=sys.stderr)
            return EXIT_FAILED
        return 0
    import boto3

    from .aws.image import (
        BuildError,
        ConsoleProgress,
        account_id,
        ensure_image,
        image_exists,
        image_uri,
    )

    try:
        settings = _aws_settings(args)
        if args.builder:
            settings.builder = args.builder
    except (AwsSetupError, ValueError) as exc:
        out["aws"] = {"status": "error", "message": str(exc)}
        print(f"starburst env: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out["aws"] = {"status": "ok", "region": settings.region, "builder": settings.builder}
    session = boto3.Session(region_name=settings.region)
    try:
        out["image"] = image_uri(settings, account_id(session, settings.region), spec)
        out["image_exists"] = image_exists(session.client("ecr", region_name=settings.region),
                                           settings.repository, spec.hash())
        if args.rebuild or (args.build and not out["image_exists"]):
            ensure_image(session, settings, spec, rebuild=args.rebuild,
                         progress=ConsoleProgress(sys.stderr))
            out["image_exists"] = out["built"] = True
    except BuildError as exc:
        out["aws"] = {**out["aws"], "status": "error", "message": str(exc)}
        print(f"starburst env: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from .envsync import capture, derived_spec
    from .envsync.dockerfile import base_image_for, platform_for

    spec = capture()
    if args.pip:
        try:
            spec = derived_spec(spec, {"pip": args.pip})
        except ValueError as exc:
            print(f"starburst env: {exc}", file=sys.stderr)
            return EXIT_USAGE
    counts = {kind: len(spec.by_kind(kind)) for kind in ("index", "local", "vcs", "url")}
    out: dict = {
        "hash": spec.hash(), "python": spec.python, "python_full": spec.python_full,
        "arch": spec.arch, "platform": platform_for(spec), "base_image": base_image_for(spec),
        "packages": {"total": len(spec.packages), **counts},
        "starburst": {**spec.starburst.to_json(), "travels": _travels(spec.starburst)},
        "local": [{**p.to_json(), "travels": _travels(p)} for p in spec.local],
        "direct": [{**p.to_json(), "travels": _travels(p)} for p in spec.vcs + spec.urls],
        "pip": list(spec.pip), "excluded": list(spec.excluded),
        "image": None, "image_exists": None, "built": False,
    }
    code = _env_aws(args, spec, out)
    if args.json:
        print(json.dumps(out, indent=2))
        return code
    print(f"starburst environment {out['hash']}" + (" (derived: runtime_env pip)" if spec.pip else ""))
    print(f"  python     {spec.python_full}, {spec.arch}: image on {out['base_image']}, {out['platform']}")
    print(f"  packages   {len(spec.packages)}: {counts['index']} pinned from the index, {counts['local']} local, "
          f"{counts['vcs']} from version control, {counts['url']} from URLs")
    if spec.excluded:
        print(f"  left out   {', '.join(spec.excluded)} (build tools and packages for other systems)")
    print(f"  starburst  {spec.starburst.version} ({spec.starburst.kind}): {out['starburst']['travels']}")
    for title, items in (("local packages", out["local"]), ("from version control and URLs", out["direct"])):
        if items:
            print(f"  {title}:")
            for p in items:
                print(f"    {p['name']} {p['version']}: {p['travels']}")
    if spec.pip:
        print(f"  runtime_env pip  {' '.join(spec.pip)}")
    aws = out["aws"]
    if aws["status"] == "not set up":
        print(f"  image      unknown: {aws['message']}")
    elif out["image"] is None:
        print(f"  image      unknown: {aws['message']}")
    else:
        print(f"  image      {out['image']}")
        if out["built"]:
            state = "built and pushed just now"
        elif out["image_exists"]:
            state = "in ECR"
        elif aws["status"] == "error":
            state = f"unknown: {aws['message']}"
        else:
            state = (f"not built yet: 'starburst env --build' builds it (with {aws['builder']}), "
                     "as will the first run on Fargate")
        print(f"             {state}")
    return code


def cmd_doctor(args: argparse.Namespace) -> int:
    from .aws.doctor import run_doctor

    report = run_doctor(as_json=args.json, join_timeout=args.timeout, lease=args.lease, build=not args.no_build)
    return 0 if report.ok else EXIT_FAILED


def _down_all(args: argparse.Namespace, info) -> int:
    """The laptop died or a head crashed: stop the local head, and every starburst task on Fargate
    found by its tags (in the region of 'starburst setup')."""
    refused = _confirm("down", "Stop the local head and every starburst task on Fargate in the region?", args)
    if refused is not None:
        return refused
    code = 0
    if info is not None:
        stopped = process.stop_head(info, timeout=args.timeout if args.timeout is not None else 180.0)
        print(f"local head (pid {info.pid}): {'stopped' if stopped else 'did not stop'}")
        code = 0 if stopped else EXIT_FAILED
    else:
        print("local head: none running")
    from .aws.settings import Settings

    if not Settings.path().exists() and not args.region:
        print("AWS: not set up on this machine ('starburst setup'); nothing to look for")
        return code
    import boto3

    from .aws.launcher import stop_orphans

    settings = _aws_settings(args)
    try:
        arns = stop_orphans(boto3.Session(region_name=settings.region), settings)
    except Exception as exc:  # noqa: BLE001 - credentials, permissions, network: say which
        print(f"starburst down: could not look for starburst tasks in {settings.region}: {_aws_message(exc)}",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"AWS ({settings.region}): stopped {len(arns)} starburst task(s)")
    return code


def _node_logs(args: argparse.Namespace) -> int:
    """A Fargate node's own log, from CloudWatch (the log group 'starburst setup' made)."""
    import boto3

    from .aws import node_logs

    settings = _aws_settings(args)
    logs = boto3.Session(region_name=settings.region).client("logs")
    try:
        stream = node_logs.find_stream(logs, settings.log_group, args.node)
        for message in node_logs.read(logs, settings.log_group, stream, follow=args.follow):
            print(message, flush=True)
    except LookupError as exc:
        print(f"starburst logs: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 0
    return 0


def _duration(seconds: float) -> str:
    from .aws.pricing import format_duration  # one duration format everywhere

    return format_duration(seconds)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``starburst up: argument --port: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="starburst", description="Run Ray Core code on a local cluster, or on AWS Fargate workers.",
        epilog=f"State lives in {config.home()} (set STARBURST_HOME to change it).",
    )
    parser.add_argument("--version", action="version", version=f"starburst {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    up = sub.add_parser("up", help="start a cluster (local, or Fargate) that stays up until 'starburst down'",
                        description="Start a head and its nodes: a local node, or Fargate workers with "
                                    "--cluster fargate. Drivers' init() finds and reuses it, so warm workers "
                                    "survive a notebook restart.")
    up.add_argument("--num-cpus", type=_positive_cpus, default=None, help="executors to run (default: all CPUs)")
    up.add_argument("--listen", default="", metavar="HOST:PORT",
                    help="also accept drivers over TCP there, with a token (default: only this user's processes, "
                         "through a Unix socket)")
    up.add_argument("--port", type=_port, default=0, help="same as --listen 127.0.0.1:PORT")
    up.add_argument("--cluster", choices=("local", "fargate"), default="local",
                    help="where the nodes run: this machine (default) or Fargate tasks (after 'starburst setup')")
    fg = up.add_argument_group("Fargate cluster (--cluster fargate)")
    from .aws import cluster as defaults  # light: no boto3 at import

    fg.add_argument("--workers", default=str(defaults.DEFAULT_WORKERS),
                    help=f"a number, or MIN,MAX to scale with the backlog (default {defaults.DEFAULT_WORKERS})")
    fg.add_argument("--cpu", default=str(defaults.DEFAULT_CPU),
                    help=f"vCPU per worker (default {defaults.DEFAULT_CPU})")
    fg.add_argument("--memory", default=defaults.DEFAULT_MEMORY,
                    help=f"memory per worker, e.g. 8GB (default {defaults.DEFAULT_MEMORY})")
    fg.add_argument("--arch", default=None, help="x86_64 (default) or arm64")
    fg.add_argument("--spot", action="store_true", help="use Fargate Spot (cheaper; may be interrupted)")
    fg.add_argument("--idle-timeout", type=float, default=defaults.DEFAULT_IDLE_TIMEOUT_S,
                    help=f"seconds before an idle worker above MIN stops (default {defaults.DEFAULT_IDLE_TIMEOUT_S:g})")
    fg.add_argument("--max-cost", type=float, default=None,
                    help="US dollars: nothing launches past it, and reaching it stops the cluster")
    fg.add_argument("--region", default=None, help="AWS region (default: the one 'starburst setup' used)")
    fg.add_argument("--image", default=None, help="worker image (default: built from this environment)")
    fg.add_argument("--lease", type=float, default=defaults.DEFAULT_LEASE_S,
                    help="seconds a worker waits for a lost head before exiting "
                         f"(default {defaults.DEFAULT_LEASE_S:g})")
    fg.add_argument("--local", action="store_true",
                    help="hybrid: also run tasks on this machine, and Fargate workers only as overflow")
    fg.add_argument("--burst", choices=("auto", "always", "never"), default=None,
                    help="with --local: when to launch Fargate workers (default auto: when the backlog "
                         "would keep this machine busy longer than --max-wait)")
    fg.add_argument("--max-wait", type=float, default=None, metavar="SECONDS",
                    help="with --local --burst auto: backlog this machine may take alone (default 30)")
    fg.add_argument("--auto-quota-request", action="store_true",
                    help="when the vCPU quota is short, request an increase without asking")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show the running cluster: nodes, tasks, objects",
                            description="Show the running cluster. Exit code 3 when none is running.")
    status.add_argument("--json", action="store_true",
                        help='machine-readable output ({"running": false} when no cluster runs)')
    status.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between redraws (default 2)")
    status.set_defaults(func=cmd_status)
    from .head.joblog import RETENTION_HELP

    logs = sub.add_parser("logs", help="show a job's task output, also after it ended",
                          description="Print what a job's tasks and actors wrote, as its driver showed it. "
                                      "The head keeps each job's output in STARBURST_HOME/logs/jobs/. "
                                      + RETENTION_HELP)
    logs.add_argument("job", nargs="?", help="job id or a unique prefix of it (default: the latest job)")
    logs.add_argument("--task", metavar="NAME", help="only this task (function name, or actor class)")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing new output until the cluster stops (or Ctrl-C)")
    logs.add_argument("--errors", action="store_true",
                      help="only errors: tasks that failed (with tracebacks) and what tasks wrote to stderr")
    logs.add_argument("--node", metavar="TASK_ID",
                      help="instead: a Fargate node's own log from CloudWatch (its ECS task id, or a prefix)")
    logs.add_argument("--region", help="with --node: the AWS region (default: that of 'starburst setup')")
    logs.set_defaults(func=cmd_logs)
    down = sub.add_parser("down", help="stop the running cluster and everything it started",
                          description="Stop the head, its nodes and their executors. Exit code 3 when "
                                      "none is running.")
    down.add_argument("--timeout", type=float, default=None,
                      help="seconds to wait for it to exit (default 20; 180 for a Fargate cluster)")
    down.add_argument("--all", action="store_true",
                      help="also stop every starburst task on Fargate, found by tag (after a crash)")
    down.add_argument("--region", help="with --all: the AWS region (default: that of 'starburst setup')")
    down.add_argument("--yes", action="store_true",
                      help="with --all: don't ask (required without a terminal)")
    down.set_defaults(func=cmd_down)
    run = sub.add_parser("run", help="run an unmodified Ray script on starburst ('import ray' works)",
                         description="Run SCRIPT as __main__ with 'import ray' mapped to starburst, in this "
                                     "process and in the cluster's workers. Exit code: the script's.")
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    run.set_defaults(func=cmd_run)

    aws = "AWS: prepare an account for Fargate clusters"
    setup = sub.add_parser("setup", help=f"create starburst's resources in your AWS account [{aws}]",
                           description="Create or find, idempotently: a private encrypted S3 bucket with a "
                                       "lifecycle rule, an ECR repository, an ECS cluster with FARGATE and "
                                       "FARGATE_SPOT, least-privilege IAM roles, a log group, and a security "
                                       "group admitting only the head's address. Everything is tagged.")
    setup.add_argument("--region", help="AWS region (default: saved setting, then AWS_REGION)")
    setup.add_argument("--head-ip", help="public address of this machine, admitted on the node port")
    setup.add_argument("--show-policies", action="store_true", help="print the IAM policy documents")
    setup.add_argument("--plan", action="store_true",
                       help="print every resource setup would create or check (name, type, region, tags, "
                            "policies) and create nothing")
    setup.add_argument("--yes", action="store_true", help="don't ask before creating (at a terminal)")
    setup.add_argument("--task-policy", action="append", metavar="ARN",
                       help="a managed IAM policy your task code needs, attached to the nodes' role "
                            "(repeatable; e.g. arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess; "
                            "--task-policy '' removes them all)")
    setup.set_defaults(func=cmd_setup)
    teardown = sub.add_parser("teardown", help="remove everything 'starburst setup' created",
                              description="Remove starburst's AWS resources (the bucket and its objects "
                                          "included). Resources not tagged as starburst's are left alone.")
    teardown.add_argument("--region")
    teardown.add_argument("--yes", action="store_true", help="don't ask (required without a terminal)")
    teardown.set_defaults(func=cmd_teardown)
    cost = sub.add_parser("cost", help="estimate what a Fargate cluster costs per hour",
                          description="Price a cluster from the built-in table (per-second billing, "
                                      "1-minute minimum). Exit code 2 for a size Fargate doesn't offer.")
    cost.add_argument("--workers", default="1", help="a number, or MIN,MAX (priced at MAX)")
    cost.add_argument("--cpu", default="1", help="vCPU per worker (0.25 to 16)")
    cost.add_argument("--memory", default="2GB", help="memory per worker, e.g. 8GB")
    cost.add_argument("--arch", default="x86_64", choices=["x86_64", "arm64"])
    cost.add_argument("--spot", action="store_true")
    cost.add_argument("--region")
    cost.add_argument("--max-cost", type=float, help="budget in USD: how long it lasts")
    cost.set_defaults(func=cmd_cost)
    quota = sub.add_parser("quota", help="show the Fargate vCPU quotas and any pending increase request",
                           description="Show the account's Fargate vCPU quotas (on-demand and Spot) in the "
                                       "region, what runs against them, and any pending increase request.")
    quota.add_argument("--region")
    quota.set_defaults(func=cmd_quota)
    env = sub.add_parser("env", help="show the worker environment: spec, hash, image (and build it)",
                         description="Show this environment as the workers get it: Python, architecture, "
                                     "packages and how each travels, its hash (the image tag), the image "
                                     "and whether it is in ECR. --build builds and pushes it when missing "
                                     "(AWS CodeBuild by default: no local Docker needed).")
    what = env.add_mutually_exclusive_group()
    what.add_argument("--build", action="store_true", help="build and push the image if it is not in ECR")
    what.add_argument("--rebuild", action="store_true", help="build and push the image even if it exists")
    env.add_argument("--builder", choices=["codebuild", "docker"],
                     help="how to build (default: the 'builder' setting, else codebuild)")
    env.add_argument("--pip", action="append", metavar="REQ",
                     help="show the derived environment of runtime_env={'pip': [REQ, ...]} (repeatable)")
    env.add_argument("--region", help="AWS region (default: that of 'starburst setup')")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(func=cmd_env)
    doctor = sub.add_parser("doctor", help="check the AWS account end to end on one tiny Fargate task (<= 1 cent)",
                            description="Check credentials, setup's resources, the quota and the worker image; "
                                        "start one 0.25 vCPU task and time its cold start (RunTask, RUNNING, "
                                        "address, TCP, TLS), a task round trip, 64 MiB through S3 from the node, "
                                        "the node's lease, and its stop. Each failure names its likely cause "
                                        "and fix. Exit code 1 when a check fails.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for the task to start and the node to join (default 300)")
    doctor.add_argument("--lease", type=float, default=30.0, help="the node's lease in seconds (default 30)")
    doctor.add_argument("--no-build", action="store_true",
                        help="fail when the worker image is missing instead of building it")
    doctor.set_defaults(func=cmd_doctor)
    return parser


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush can't complain about the pipe."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # 'starburst status | head': the reader has what it wanted
        _quiet_stdout()
        return 0
    except Exception as exc:  # noqa: BLE001 - a CLI reports, it doesn't dump a traceback
        print(f"starburst {args.command}: {_aws_message(exc)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
