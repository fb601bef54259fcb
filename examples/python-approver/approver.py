#!/usr/bin/env python3
"""An approval client for the agent-supervisor daemon, in Python.

Connects to the daemon's unix socket with a default grpcio channel, checks its health,
optionally lists its services by server reflection, then watches the approvals waiting (and
those to come) and answers each one: `--allow-command NAME` allows running the program NAME,
everything else gets `--answer` (deny unless told otherwise).

    python3 generate_stubs.py                 # once: the API's stubs into gen/
    python3 approver.py --allow-command git --answer deny

Exit codes: 0 done (--count answers given, or --check-only), 1 an answer was refused or the
watch ended, 2 usage or set-up error (missing packages or stubs), 3 --timeout passed first,
125 the daemon can't be reached or is not serving, 130 interrupted.
"""
import argparse
import json
import os
import pathlib
import sys
import threading

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_SOCKET = "/run/agent-supervisor/api.sock"

EXIT_OK, EXIT_REFUSED, EXIT_SETUP, EXIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3, 125


def fail(code: int, message: str) -> "NoReturn":  # noqa: F821
    print(f"approver: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Watch the agent-supervisor daemon's approvals and answer them.",
        epilog="Exit codes: 0 done, 1 an answer refused or the watch ended, 2 usage or "
        "set-up error, 3 --timeout passed, 125 daemon unreachable or not serving.",
    )
    p.add_argument("--socket", default=os.environ.get("AGENT_SUPERVISOR_SOCKET", DEFAULT_SOCKET),
                   help="the daemon's API socket (default: $AGENT_SUPERVISOR_SOCKET or %s)"
                   % DEFAULT_SOCKET)
    p.add_argument("--token", default=os.environ.get("AGENT_SUPERVISOR_TOKEN"),
                   help="bearer token (default: $AGENT_SUPERVISOR_TOKEN; none: the caller is "
                   "known by its uid)")
    p.add_argument("--allow-command", action="append", default=[], metavar="NAME",
                   help="allow running NAME (a program's file name or full path; repeatable)")
    p.add_argument("--answer", choices=["allow", "deny"], default="deny",
                   help="the answer to every other approval (default: deny)")
    p.add_argument("--for-session", action="store_true",
                   help="answer for the rest of the session, not just this once")
    p.add_argument("--session", default="", help="only this session's approvals")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after answering N approvals (default: run until interrupted)")
    p.add_argument("--once", action="store_const", const=1, dest="count",
                   help="exit after the first answer (--count 1)")
    p.add_argument("--list-services", action="store_true",
                   help="print the daemon's services (server reflection) before watching")
    p.add_argument("--check-only", action="store_true",
                   help="check health (and --list-services), then exit")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="give up (exit 3) when not done after SECONDS")
    p.add_argument("--stubs", type=pathlib.Path, default=HERE / "gen",
                   help="the generated stubs (generate_stubs.py; default: %(default)s)")
    args = p.parse_args()
    if args.count < 0:
        p.error("--count must be 0 or more")
    return args


def import_stubs(stubs: pathlib.Path):
    try:
        import grpc  # noqa: F401
        from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: F401
    except ImportError as e:
        fail(EXIT_SETUP, f"{e.name} is missing: pip install -r {HERE / 'requirements.txt'}")
    if not (stubs / "agent_supervisor" / "v1" / "supervisor_pb2_grpc.py").is_file():
        fail(EXIT_SETUP, f"no stubs in {stubs}: run {HERE / 'generate_stubs.py'} first")
    sys.path.insert(0, str(stubs))
    from agent_supervisor.v1 import supervisor_pb2, supervisor_pb2_grpc
    return supervisor_pb2, supervisor_pb2_grpc


def program_names(approval) -> set:
    """The names an exec approval's program goes by: its path, what the agent invoked, argv[0],
    and their file names."""
    try:
        action = json.loads(approval.action_json)
    except ValueError:
        return set()
    names = set()
    for value in [action.get("path"), action.get("invoked"), (action.get("argv") or [None])[0]]:
        if isinstance(value, str) and value:
            names.add(value)
            names.add(os.path.basename(value))
    return names


def decide(approval, args) -> str:
    if approval.kind == "exec" and program_names(approval) & set(args.allow_command):
        return "allow"
    return args.answer


def main() -> int:
    args = parse_args()
    pb, pb_grpc = import_stubs(args.stubs)
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # A default channel: no options (the daemon accepts grpcio's own `:authority`).
    channel = grpc.insecure_channel("unix:" + args.socket)
    metadata = [("authorization", "Bearer " + args.token)] if args.token else []
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="agent_supervisor.v1.Approvals"), timeout=10)
    except grpc.FutureTimeoutError:
        fail(EXIT_UNREACHABLE, f"cannot connect to {args.socket} (is the daemon running?)")
    except grpc.RpcError as e:
        fail(EXIT_UNREACHABLE, f"health check on {args.socket}: {e.code().name}: {e.details()}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    print(f"health: {status}", flush=True)
    if status != "SERVING":
        fail(EXIT_UNREACHABLE, "the daemon's approvals service is not serving")

    if args.list_services:
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )
        try:
            for name in sorted(ProtoReflectionDescriptorDatabase(channel).get_services()):
                print(f"service: {name}", flush=True)
        except grpc.RpcError as e:
            fail(EXIT_UNREACHABLE, f"reflection: {e.code().name}: {e.details()}")
    if args.check_only:
        return EXIT_OK

    approvals = pb_grpc.ApprovalsStub(channel)
    resolutions = {
        ("allow", False): pb.ALLOW_ONCE, ("deny", False): pb.DENY_ONCE,
        ("allow", True): pb.ALLOW_FOR_SESSION, ("deny", True): pb.DENY_FOR_SESSION,
    }
    watch = approvals.WatchApprovals(pb.WatchApprovalsRequest(session=args.session),
                                     metadata=metadata)
    timed_out = threading.Event()
    if args.timeout > 0:
        timer = threading.Timer(args.timeout, lambda: (timed_out.set(), watch.cancel()))
        timer.daemon = True
        timer.start()
    answered = 0
    try:
        for event in watch:
            which = event.WhichOneof("event")
            if which == "synced":
                print("watching: the approvals already waiting were listed", flush=True)
                continue
            if which == "resolved":
                r = event.resolved
                print(f"resolved: {r.id} {r.decision} by {r.by}", flush=True)
                continue
            a = event.pending
            print(f"pending: {a.id} session {a.session} {a.kind}: {a.summary} (rule: {a.rule})",
                  flush=True)
            answer = decide(a, args)
            try:
                reply = approvals.Resolve(
                    pb.ResolveRequest(id=a.id, action_digest=a.action_digest,
                                      resolution=resolutions[(answer, args.for_session)]),
                    metadata=metadata, timeout=10)
            except grpc.RpcError as e:
                print(f"approver: answer to {a.id} refused: {e.code().name}: {e.details()}",
                      file=sys.stderr, flush=True)
                if args.count:
                    return EXIT_REFUSED
                continue
            print(f"answered: {reply.id} {reply.decision}", flush=True)
            answered += 1
            if args.count and answered >= args.count:
                watch.cancel()
                return EXIT_OK
    except grpc.RpcError as e:
        if timed_out.is_set():
            fail(EXIT_TIMEOUT, f"--timeout {args.timeout:g} s passed after {answered} answer(s)")
        fail(EXIT_REFUSED, f"the approval watch failed: {e.code().name}: {e.details()}")
    fail(EXIT_REFUSED, "the daemon ended the approval watch")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
