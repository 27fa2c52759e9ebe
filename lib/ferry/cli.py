"""The ``ferry`` command: one function per verb, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from ferry.config import CLIENTS, load_config
from ferry.errors import FerryError, UsageError
from ferry.exitcodes import ExitCode, exit_code_for


def cmd_services(args: argparse.Namespace) -> int:
    from ferry.services import servers as services

    folder = Path(args.folder).resolve() / "services" if args.folder else None
    if args.action == "up":
        s = services.start_services(folder, kafka=args.kafka, kafka_version=args.kafka_version)
        broker = "Tansu" if s.kafka_kind == "tansu" else f"Apache Kafka {s.kafka_version}, KRaft"
        print(f"kafka  {s.kafka_bootstrap}  ({broker}, pid {s.kafka_pid})")
        print(f"redis  {s.redis_url}  ({s.redis_kind}, pid {s.redis_pid})")
        print(f"logs   {s.folder}")
    elif args.action == "down":
        print("stopped" if services.stop_services(folder) else "nothing was running")
    else:
        status = services.service_status(folder)
        print(json.dumps(status, indent=2))
        return 0 if status["kafka"] == "up" and status["redis"] == "up" else 1
    return 0


def stop_on(*signals: signal.Signals):
    """A ``should_stop`` callable that turns True once one of ``signals`` arrives: long-running
    verbs finish their current batch and exit cleanly."""
    stop = {"flag": False}
    for sig in signals:
        signal.signal(sig, lambda *_: stop.__setitem__("flag", True))
    return lambda: stop["flag"]


def cmd_backfill(args: argparse.Namespace) -> int:
    from ferry.core.mirror import backfill

    config = load_config(args.stream)
    should_stop = stop_on(signal.SIGTERM, *([signal.SIGINT] if args.follow else []))
    metrics, addr = None, args.metrics_addr
    if addr is None and args.metrics_port:  # deprecated spelling of 127.0.0.1:PORT
        addr = f"127.0.0.1:{args.metrics_port}"
    if addr is not None:
        from ferry.metrics import parse_addr, serve_mirror_metrics

        metrics = serve_mirror_metrics(parse_addr(addr), config.name, args.lag_stale_after)
    hooks = {  # what the metrics endpoint (if any) hears from the copy
        "on_batch": metrics.on_batch if metrics else None,
        "on_lag": metrics.on_lag if metrics else None,
        "on_redis_fault": metrics.on_redis_fault if metrics else None,
        "on_error": metrics.on_error if metrics else None,
    }
    if args.workers or args.group:  # one worker of the migration's Kafka consumer group
        from ferry.core.workers import run_worker

        summary = run_worker(
            config,
            follow=args.follow,
            group=args.group,
            session_timeout_ms=args.session_timeout,
            should_stop=should_stop,
            **hooks,
        )
        print(json.dumps(summary.as_json()))
        return 0
    if args.follow:
        from ferry.core.follower import heartbeat_on_lag

        hooks["on_lag"] = heartbeat_on_lag(config, hooks["on_lag"], addr)
    summary = backfill(
        config,
        follow=args.follow,
        client=args.client,
        progress=not args.no_progress,
        should_stop=should_stop,
        **hooks,
    )
    print(json.dumps(summary.as_json()))
    return 0


def cmd_mirror(args: argparse.Namespace) -> int:
    from ferry.core import follower

    config = load_config(args.stream)
    if args.action == "status":
        status = follower.mirror_status(config)
        print(json.dumps(status, indent=2) if args.json else follower.format_status(status))
        return 0 if status["live"] else follower.MIRROR_NOT_LIVE
    result = follower.stop_mirror(config, wait_s=args.wait)
    print(result.message)
    return 0 if result.stopped else follower.MIRROR_NOT_LIVE


def cmd_acl(args: argparse.Namespace) -> int:
    from ferry.redis.acl import setuser_line

    config = load_config(args.stream)
    print(setuser_line(args.role, args.user or f"ferry-{args.role}", config.name))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ferry.core.validate import validate_stream

    report = validate_stream(load_config(args.stream), client=args.client)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    return ExitCode.OK if report.ok else ExitCode.INTEGRITY


def format_report(report) -> str:
    head = ("partition", "kafka", "redis", "missing", "dup", "order", "mismatch", "extra", "gaps")
    lines = [f"{report.stream}: topic {report.topic} -> {', '.join(report.stream_keys)}"]
    lines.append("  ".join(f"{h:>9}" for h in head))
    for p in report.partitions:
        row = (
            p.partition, p.kafka_count, p.redis_count, p.missing, p.duplicates,
            p.out_of_order, p.mismatched, p.extra, p.unexplained_gaps,
        )  # fmt: skip
        lines.append("  ".join(f"{v:>9}" for v in row))
    lines.append(
        "OK: every invariant holds" if report.ok else "FAILED:\n  " + "\n  ".join(report.failures())
    )
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from ferry.extras import require
    from ferry.runbook.fleet import check_run_options
    from ferry.runbook.plan import load_steps
    from ferry.runbook.runner import RunInterrupted, format_steps, raise_on_failure, run_runbook

    require("runbook", "run")
    check_run_options(
        args.stream, args.all, args.parallel, args.streams, args.start, args.only, load_steps()
    )
    parameters = step_parameters(parse_parameters(args.param), args.start, args.only)
    if args.all:
        from ferry.runbook.fleet_run import run_all_streams

        return run_all_streams(
            args.streams, args.parallel, args.start, args.only, args.audit, args.param
        )
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C: archive, exit 130
    try:
        result = run_runbook(
            args.stream,
            start=args.start,
            only=args.only,
            audit_root=Path(args.audit) if args.audit else None,
            parameters=parameters,
        )
    except RunInterrupted as exc:
        print(format_steps(exc.result))
        print(f"archive: {exc.result.folder}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_steps(result))
    print(f"archive: {result.folder}")
    raise_on_failure(result)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


_RESERVED = ("stream", "run_dir")  # what ferry run passes every step itself
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "private")


def parse_parameters(raw: list[str] | None) -> dict:
    """``NAME=VALUE`` pairs, each value a YAML scalar (``5``, ``2.5``, ``false``, ``text``).
    A name that looks like a secret is refused: notebooks are archived with their parameters."""
    import yaml

    out: dict = {}
    for item in raw or ():
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"-p {item!r}: expected NAME=VALUE with NAME a Python identifier")
        lowered = name.lower()
        if any(w in lowered for w in _SECRET_WORDS) or any(
            part.endswith(("key", "keys")) for part in lowered.split("_")
        ):
            raise UsageError(
                f"-p {name}: looks like a secret, and secrets are never notebook parameters (the "
                "archived notebooks record them); name it in the stream config as {env: VAR} or "
                "{file: PATH} and set it in the environment"
            )
        if name in _RESERVED:
            raise UsageError(f"-p {name}: ferry run sets {name!r} itself")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise UsageError(f"-p {name}: cannot read {text!r} as a YAML scalar: {exc}") from exc
        if isinstance(value, (list, dict, set)) or not isinstance(
            value, (str, int, float, bool, type(None))
        ):
            raise UsageError(f"-p {name}: {text!r} is not a scalar (a number, true/false, text)")
        out[name] = value
    return out


def step_parameters(values: dict, start: str | None, only: str | None) -> dict[str, dict]:
    """``values`` split by step id, each step getting the names its parameters cell declares;
    a name no step of this run declares is refused (a typo would otherwise change nothing)."""
    if not values:
        return {}
    import papermill

    from ferry.runbook.plan import load_steps, plan_run, project_root

    declared = {
        step.id: set(papermill.inspect_notebook(str(project_root() / step.notebook)))
        for step in plan_run(load_steps(), start, only)
        if step.notebook is not None
    }
    known = set().union(*declared.values()) - set(_RESERVED)
    for name in values:
        if name not in known:
            raise UsageError(
                f"-p {name}: no step of this run declares a parameter {name!r} "
                f"(they declare: {', '.join(sorted(known)) or 'none'})"
            )
    per_step = {
        sid: {n: v for n, v in values.items() if n in names} for sid, names in declared.items()
    }
    return {sid: given for sid, given in per_step.items() if given}


def cmd_audit(args: argparse.Namespace) -> int:
    from ferry.runbook.audit import verify_archive

    folder = Path(args.folder)
    if args.action == "keygen":
        from ferry.runbook.audit_anchor import generate_key_pair

        private, public = generate_key_pair(folder)
        print(
            f"private key {private} (FERRY_AUDIT_SIGNING_KEY), public key {public} "
            "(FERRY_AUDIT_PUBLIC_KEY)"
        )
        return 0
    problems = verify_archive(folder)
    if not args.offline and not problems:
        from ferry.runbook.audit_anchor import verify_anchor

        problems = verify_anchor(folder)
    if problems:
        print("\n".join(problems))
        return ExitCode.INTEGRITY
    anchored = "" if args.offline else ", and the head matches the one recorded in Redis"
    print(f"{args.folder}: intact (every hash and the chain verify{anchored})")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from ferry.config import load_config
    from ferry.errors import KafkaError
    from ferry.runbook.plan import project_root
    from ferry.services.seed import seed_demo_topic
    from ferry.services.servers import running_services

    config = load_config(project_root() / "runbook" / "streams" / "payments.yaml")
    try:
        n = seed_demo_topic(
            running_services().kafka_bootstrap, config.kafka.topic, args.records, args.partitions
        )
    except KafkaError as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
        print(f"topic {config.kafka.topic!r} already exists; left as it is")
        return 0
    print(f"seeded {n} records into {config.kafka.topic!r}")
    return 0


def cmd_phase(args: argparse.Namespace) -> int:
    from ferry.core.ingest import migration_keys
    from ferry.live.phases import check_manual_move, read_phase, read_writers, set_phase
    from ferry.redis.target import connect_redis

    config = load_config(args.stream)
    client, keys = connect_redis(config), migration_keys(config)
    state = read_phase(client, keys)
    if args.set:
        risk = check_manual_move(state.phase, args.set, args.force)
        reason = args.reason or ("ferry phase --force" if risk else "ferry phase")
        if risk:
            print(f"ferry: warning: forced {state.phase} -> {args.set}: {risk}", file=sys.stderr)
        state = set_phase(client, keys, args.set, reason=reason, actor="cli", forced=bool(risk))
    writers = [w.__dict__ for w in read_writers(client, keys)]
    print(json.dumps({"phase": state.phase, "epoch": state.epoch, "writers": writers}, indent=2))
    return 0


def cmd_cutover(args: argparse.Namespace) -> int:
    from ferry.live.cutover import run_cutover

    report = run_cutover(
        load_config(args.stream),
        pause_bound_s=args.pause_bound,
        lag_threshold=args.lag_threshold,
        attempts=args.attempts,
    )
    print(json.dumps(report.__dict__, default=str))
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    from ferry.live.finish import run_finish

    report = run_finish(
        load_config(args.stream),
        quiet_window_s=args.quiet_window,
        fence_kafka=args.fence_kafka,
        kafka_allows_everyone=args.kafka_allows_everyone,
    )
    print(json.dumps(report.__dict__, default=str))
    return 0


def cmd_translate_group(args: argparse.Namespace) -> int:
    from ferry.live.handover import translate_group

    result = translate_group(
        load_config(args.stream), args.group, reset=args.reset, accept_gap=args.accept_gap
    )
    print(json.dumps(result.__dict__))
    return 0


def cmd_group_consumer(args: argparse.Namespace) -> int:
    from ferry.live.group_consumer import run_group_consumer

    should_stop = stop_on(signal.SIGTERM, signal.SIGINT)
    counts = run_group_consumer(load_config(args.stream), args.group, Path(args.log), should_stop)
    print(json.dumps(counts))
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    from ferry.services.traffic import generate_traffic

    should_stop = stop_on(signal.SIGTERM, signal.SIGINT)
    counts = generate_traffic(
        load_config(args.stream),
        rate=args.rate,
        seconds=args.seconds,
        should_stop=should_stop,
        seed=args.seed,
    )
    print(json.dumps(counts))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ferry.extras import require

    require("runbook", "demo")
    from ferry.services.demo import run_demo

    return run_demo(records=args.records, partitions=args.partitions, rate=args.rate)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after an option's help, except where there is nothing to show
    (no default, a flag) or the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ferry")
    except PackageNotFoundError:
        return "unknown (not installed as a distribution)"


STREAM_HELP = "stream name (runbook/streams/NAME.yaml) or config path"
EPILOG = (
    "exit status: 0 ok, 1 other error, 2 usage, 3 configuration, 4 Kafka or Redis unreachable, "
    "5 runbook gate failed, 6 data integrity, 130 interrupted (README.md, Exit status)"
)


def build_parser() -> argparse.ArgumentParser:
    # no abbreviations at the top: `group-consumer --log` is not `--log-level`
    parser = _Parser(prog="ferry", description=__doc__, epilog=EPILOG, allow_abbrev=False)
    parser.add_argument(
        "--version",
        action="version",
        version=f"ferry {installed_version()}",
        help="print the installed version of ferry and exit",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="ferry's log on stderr from this level (default: INFO; DEBUG also shows every "
        "line of the Kafka clients, which are otherwise WARNING+ and throttled)",
    )
    parser.add_argument("--log-json", action="store_true", help="log one JSON object a line")
    parser.add_argument("--log-file", help="append the log to this file instead of stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("services", help="start, stop or show the embedded Kafka and Redis")
    s.add_argument(
        "action",
        choices=("up", "down", "status"),
        help="up: start both; down: stop them; status: show them as JSON (exit 1 unless both up)",
    )
    s.add_argument("--folder", help="state and logs folder (default $FERRY_HOME or .ferry)")
    s.add_argument(
        "--kafka",
        choices=("tansu", "apache"),
        help="the broker: tansu (embedded, no Java; default) or apache (Apache Kafka in KRaft "
        "mode, jars from Maven Central; needs Java 17+ and Maven). Default: $FERRY_KAFKA or tansu",
    )
    s.add_argument(
        "--kafka-version",
        help="Apache Kafka version: 3.7, 4.x or a full version such as 3.7.2 (default: 3.7.2)",
    )
    s.set_defaults(func=cmd_services)

    b = sub.add_parser("backfill", help="copy a topic into its stream from the frontier")
    b.add_argument("stream", help=STREAM_HELP)
    b.add_argument("--follow", action="store_true", help="keep tailing after catching up")
    b.add_argument(
        "--client", choices=CLIENTS, help="read Kafka with this client instead of kafka.client"
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on HOST:PORT (0.0.0.0:9108 to be scraped from other "
        "hosts or pods); series in README.md, Metrics",
    )
    b.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="deprecated: the same as --metrics-addr 127.0.0.1:PORT (this host only)",
    )
    b.add_argument(
        "--lag-stale-after",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="drop the lag series and set ferry_mirror_lag_stale to 1 when no lag was measured "
        "for this long (default: 15)",
    )
    b.add_argument(
        "--workers",
        action="store_true",
        help="run as one of N mirror workers: join the migration's Kafka consumer group "
        "(ferry-mirror.NAME) and copy the partitions Kafka assigns, each from its Redis "
        "frontier; start as many processes, on any hosts, as wanted (confluent-kafka; "
        "nothing is committed to Kafka). Without --follow a worker exits once every "
        "partition reached the end it had when the worker started",
    )
    b.add_argument(
        "--group",
        metavar="ID",
        help="the workers' consumer group instead of ferry-mirror.NAME (implies --workers)",
    )
    b.add_argument(
        "--session-timeout",
        type=int,
        default=10_000,
        metavar="MS",
        help="with --workers: how long a silent worker keeps its partitions before Kafka "
        "moves them (default: 10000; the broker's group.min.session.timeout.ms bounds it)",
    )
    b.set_defaults(func=cmd_backfill)

    m = sub.add_parser(
        "mirror",
        help="show or stop the follow mirror of a stream (exit 0: live or stopped, 1: not)",
    )
    m.add_argument(
        "action",
        choices=("status", "stop"),
        help="status: is it live, its lag and heartbeat; stop: ask it to stop and wait",
    )
    m.add_argument("stream", help=STREAM_HELP)
    m.add_argument("--json", action="store_true", help="status: print it as JSON")
    m.add_argument("--wait", type=float, default=30.0, help="stop: seconds to wait for it to exit")
    m.set_defaults(func=cmd_mirror)

    v = sub.add_parser("validate", help="compare Kafka and the stream, per partition")
    v.add_argument("stream", help=STREAM_HELP)
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument(
        "--client",
        choices=CLIENTS,
        help="read Kafka with this client (default: the one the mirror does not use)",
    )
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run the runbook's notebooks for a stream into an audit archive")
    r.add_argument("stream", nargs="?", help=STREAM_HELP + " (or --all)")
    r.add_argument(
        "--all",
        action="store_true",
        help="every config in runbook/streams/, each in its own `ferry run` and archive, "
        "then one status table",
    )
    r.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="with --all: streams run at once (default: 2)",
    )
    r.add_argument(
        "--streams",
        metavar="DIR",
        help="with --all: the folder of stream configs (default: runbook/streams)",
    )
    r.add_argument("--from", dest="start", help="resume at this step (id or name)")
    r.add_argument("--only", help="run just this step (id or name)")
    r.add_argument("--audit", help="archive root (default: $FERRY_HOME/audit if set, else ./audit)")
    r.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a notebook parameter for the steps whose parameters cell declares NAME; VALUE "
        "is a YAML scalar (500, 2.5, true, text); repeatable; never a secret",
    )
    r.set_defaults(func=cmd_run)

    acl = sub.add_parser("acl", help="print the ACL SETUSER line of a role (least privilege)")
    acl.add_argument("role", help="mirror, validator, writer, consumer or operator")
    acl.add_argument("stream", help=STREAM_HELP)
    acl.add_argument("--user", default=None, help="the ACL user (default: ferry-ROLE)")
    acl.set_defaults(func=cmd_acl)

    a = sub.add_parser("audit", help="check an archived run, or make the operator's key pair")
    a.add_argument(
        "action",
        choices=("verify", "keygen"),
        help="verify: check an archived run (exit 6 when altered); keygen: make a key pair",
    )
    a.add_argument("folder", help="verify: audit/<stream>/<run-id>; keygen: where the keys go")
    a.add_argument(
        "--offline",
        action="store_true",
        help="check only the archive itself, not its head against the one recorded in Redis",
    )
    a.set_defaults(func=cmd_audit)

    ph = sub.add_parser("phase", help="show (or --set) the migration phase and the writers")
    ph.add_argument("stream", help=STREAM_HELP)
    ph.add_argument(
        "--set",
        choices=("kafka-only", "dual-write", "draining", "redis-primary", "redis-only"),
        help="move the migration to this phase (default: only show it)",
    )
    ph.add_argument(
        "--reason", default="", help="why, recorded in the events stream (default: 'ferry phase')"
    )
    ph.add_argument(
        "--force",
        action="store_true",
        help="make a move that belongs to cutover, rollback or finish without their gates "
        "(logged as a 'forced' event; only kafka-only -> dual-write and draining -> dual-write "
        "need no --force)",
    )
    ph.set_defaults(func=cmd_phase)

    co = sub.add_parser(
        "cutover", help="draining, then redis-primary within the pause bound, or abort"
    )
    co.add_argument("stream", help=STREAM_HELP)
    co.add_argument("--pause-bound", type=float, default=1.0, help="seconds writers may be held")
    co.add_argument(
        "--attempts",
        type=int,
        default=1,
        help="drains to try: one that would pass the pause bound goes back to dual-write and "
        "the next starts 2 s later",
    )
    co.add_argument(
        "--lag-threshold", type=int, default=10_000, help="mirror lag allowed before draining"
    )
    co.set_defaults(func=cmd_cutover)

    fi = sub.add_parser(
        "finish", help="redis-primary -> redis-only (no way back), only when every gate holds"
    )
    fi.add_argument("stream", help=STREAM_HELP)
    fi.add_argument(
        "--quiet-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long no record may have reached Kafka directly (not a shadow)",
    )
    fi.add_argument(
        "--fence-kafka",
        action="store_true",
        help="deny Write on the topic with a Kafka ACL after the gates, before the switch",
    )
    fi.add_argument(
        "--kafka-allows-everyone",
        action="store_true",
        help="the broker runs with allow.everyone.if.no.acl.found=true: on a topic without ACLs "
        "the fence also allows every other operation to User:*, so readers keep reading",
    )
    fi.set_defaults(func=cmd_finish)

    tg = sub.add_parser(
        "translate-group", help="turn a Kafka group's offsets into a Redis consumer group"
    )
    tg.add_argument("stream", help=STREAM_HELP)
    tg.add_argument(
        "group", help="the Kafka consumer group (it must have committed offsets on the topic)"
    )
    tg.add_argument(
        "--reset",
        choices=("latest", "earliest"),
        default="latest",
        help="a partition the group never committed: 'latest' (Kafka's default) delivers "
        "nothing of it already in the stream, 'earliest' delivers it from the migration's start",
    )
    tg.add_argument(
        "--accept-gap",
        action="store_true",
        help="hand over a group that committed below the migration's start anyway, losing the "
        "records in between; the gap is recorded in the events stream",
    )
    tg.set_defaults(func=cmd_translate_group)

    tr = sub.add_parser("traffic", help="send payment events through a DualWriter at a steady rate")
    tr.add_argument("stream", help=STREAM_HELP)
    tr.add_argument("--rate", type=float, default=2000.0, help="messages per second")
    tr.add_argument("--seconds", type=float, help="stop after this long (default: until SIGTERM)")
    tr.add_argument("--seed", type=int, default=1, help="random seed of the generated events")
    tr.set_defaults(func=cmd_traffic)

    gc = sub.add_parser(
        "group-consumer",
        help="a consumer group member that reads Kafka, then Redis after the hand-over (step 05)",
    )
    gc.add_argument("stream", help=STREAM_HELP)
    gc.add_argument("group", help="the Kafka consumer group it joins")
    gc.add_argument("--log", required=True, help="file to append what it processed (JSON lines)")
    gc.set_defaults(func=cmd_group_consumer)

    sd = sub.add_parser("seed-demo", help="create and fill the demo topic on the running services")
    sd.add_argument("--records", type=int, default=200_000, help="records to produce")
    sd.add_argument("--partitions", type=int, default=6, help="partitions of the topic")
    sd.set_defaults(func=cmd_seed_demo)

    d = sub.add_parser(
        "demo", help="run the whole runbook on a seeded demo topic on fresh embedded services"
    )
    d.add_argument("--records", type=int, default=200_000, help="records seeded before the run")
    d.add_argument("--partitions", type=int, default=6, help="partitions of the demo topic")
    d.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        metavar="MSGS",
        help="live traffic through the DualWriter during the run, messages per second",
    )
    d.set_defaults(func=cmd_demo)

    from ferry.services.lab import cmd_lab

    lb = sub.add_parser(
        "lab", help="JupyterLab on the runbook; services it starts are stopped when it exits"
    )
    lb.add_argument("--notebook-dir", help="default: the project's notebooks/")
    lb.add_argument("--port", type=int, help="JupyterLab's port (default: its own, 8888)")
    lb.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lb.add_argument("--folder", help="services state folder (default $FERRY_HOME or .ferry)")
    lb.set_defaults(func=cmd_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    import redis

    from ferry.logs import configure_logging, reset_logging
    from ferry.redis.faults import describe_permanent, transient_cause

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, json=args.log_json, file=args.log_file)
    try:
        return int(args.func(args))
    except FerryError as exc:
        print(f"ferry: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except redis.RedisError as exc:  # a Redis fault outside the paths that wait them out
        cause = transient_cause(exc)
        text = f"{cause}: {' '.join(str(exc).split())[:200]}" if cause else None
        print(f"ferry: error: {text or describe_permanent(exc, None)}", file=sys.stderr)
        return exit_code_for(exc)
    except ModuleNotFoundError as exc:  # an optional extra's module: one line naming the extra
        from ferry.extras import explain

        text = explain(exc, args.command)
        if text is None:
            raise
        print(f"ferry: error: {text}", file=sys.stderr)
        return ExitCode.CONFIG
    except KeyboardInterrupt:
        print("ferry: interrupted; rerun to resume from the frontier", file=sys.stderr)
        return ExitCode.INTERRUPTED
    finally:
        reset_logging()  # main() called in-process leaves no handler behind


if __name__ == "__main__":
    sys.exit(main())
