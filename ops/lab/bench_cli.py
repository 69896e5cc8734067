"""`paystream bench ...`: programs that print figures (never timed tests)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from paystream.settings import get_settings

app = typer.Typer(no_args_is_help=True)


@app.command("ledger")
def ledger_cmd(
    transfers: int = typer.Option(20_000, help="transfers per full-speed run"),
    accounts: int = typer.Option(1_000),
    paced_rate: float = typer.Option(500.0, help="transfers/s for the latency run"),
    paced_seconds: float = typer.Option(10.0),
    commit_interval: list[float] = typer.Option([0.05, 0.2], help="repeat for several values"),
    workload: list[str] = typer.Option(["uniform", "hot"], help="uniform | hot (one account sends 50%)"),
    batch: bool = typer.Option(True, help="send through paystream's batching client library"),
    batch_max: int = typer.Option(128, help="most commands in one batch record"),
    batch_linger_ms: float = typer.Option(5.0, help="longest a command waits for its batch"),
) -> None:
    """Sustained transfers/s and produce->outcome latency of one ledger process."""
    from ops.lab.bench.ledger import BATCH, bench

    BATCH.update(enabled=batch, max_items=batch_max, linger_ms=batch_linger_ms)

    try:
        bench(get_settings(), transfers=transfers, accounts=accounts, paced_rate=paced_rate,
              paced_seconds=paced_seconds, commit_intervals=commit_interval, workloads=workload,
              console=Console())
    except RuntimeError as exc:
        Console().print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("framework")
def framework_cmd(
    messages: int = typer.Option(40_000, help="transfer commands per stage"),
    stage: list[str] = typer.Option(["alo-pass", "eos-pass", "eos-state", "eos-avro", "eos-shape"],
                                    help="alo-pass | eos-pass | eos-state | eos-avro | eos-shape (repeat)"),
) -> None:
    """CPU per message of Quix Streams itself, step by step up to the ledger's shape."""
    from ops.lab.bench.framework import STAGES, bench

    unknown = sorted(set(stage) - set(STAGES))
    if unknown:
        raise typer.BadParameter(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    try:
        bench(get_settings(), messages=messages, stages=stage, console=Console())
    except RuntimeError as exc:
        Console().print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("fraud")
def fraud_cmd(
    instances: list[int] = typer.Option([1], "--instances", help="fraud instance counts (repeat)"),
    cores: float = typer.Option(0.0, help="CPU quota of each instance in cores (0: none)"),
    accounts: int = typer.Option(10_000),
    transfers: int = typer.Option(20_000, help="transfers in the journal, per instance"),
    workload: str = typer.Option("uniform", help="uniform, hot (one busy sender) or fanin (one merchant)"),
    timeout: float = typer.Option(600.0, help="give up when fraud has not caught up by then"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the results as JSON to this path"),
) -> None:
    """Transfers/s fraud scores catching up on a journal, with 1 or more instances."""
    from ops.lab.bench.fraud import bench

    console = Console()
    try:
        bench(instances=instances, cores=cores, accounts=accounts, transfers_per_instance=transfers,
              timeout=timeout, json_path=json_out, console=console, workload=workload)
    except (RuntimeError, PermissionError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("scale")
def scale_cmd(
    instances: list[int] = typer.Option([1, 2, 4, 8], "--instances", help="ledger instance counts (repeat)"),
    cores: float = typer.Option(0.2, help="CPU quota of each instance, in cores (cgroup cpu controller)"),
    accounts: int = typer.Option(10_000),
    transfers: int = typer.Option(6_000, help="full-speed transfers per instance"),
    warmup_seconds: float = typer.Option(20.0, help="unmeasured transfers first, on each fresh stack"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the results as JSON to this path"),
) -> None:
    """Sustained transfers/s with 1, 2, 4, 8 ledger instances, each held to the same CPU quota."""
    from ops.lab.bench.scale import scale

    console = Console()
    try:
        scale(instances=instances, cores=cores, accounts=accounts, transfers_per_instance=transfers,
              warmup_seconds=warmup_seconds, json_path=json_out, console=console)
    except (RuntimeError, PermissionError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("compare")
def compare_cmd(
    accounts: int = typer.Option(10_000, help="accounts (both designs)"),
    transfers: int = typer.Option(20_000, help="transfers per full-speed run"),
    paced_rate: float = typer.Option(500.0, help="offered transfers/s for the latency run"),
    paced_seconds: float = typer.Option(10.0),
    pool: list[int] = typer.Option([8, 16, 32, 64], help="baseline pool sizes to try (repeat)"),
    variant: list[str] = typer.Option(["classic", "proc"], help="baseline variants: classic | pipeline | proc"),
    sweep: int = typer.Option(6_000, help="transfers per baseline sweep run"),
    workload: list[str] = typer.Option(["uniform", "hot", "fanin"], help="uniform | hot | fanin"),
    commit_interval: float = typer.Option(0.1, help="ledger commit interval (s)"),
    isolated: bool = typer.Option(False, help="run both designs on a fresh stack of their own"),
    group_wait: float = typer.Option(600.0, help="seconds to wait for other ledgers to leave the group"),
    publish: bool = typer.Option(False, help="also copy the plot to docs/bench/compare.png"),
    design: str = typer.Option("paystream,baseline,kstreams",
                               help="comma list of designs: paystream, baseline (Postgres), kstreams "
                                    "(Kafka Streams peer, built with Maven; a failed build stops the bench)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the results as JSON to this path"),
    instances: int = typer.Option(2, help="ledger processes (paystream) and stream threads (Kafka Streams peer): "
                                          "one per core of this 2-core machine"),
    warmup_seconds: float = typer.Option(30.0, help="unmeasured transfers for at least this long before each "
                                                    "broker design's first workload (broker and JIT warm)"),
    batch_linger_ms: float = typer.Option(5.0, help="longest a command waits for its batch in paystream's client "
                                                    "library; the other designs' records linger as long"),
) -> None:
    """paystream vs a Kafka Streams peer and the classic Postgres row-locking design, same workloads."""
    from ops.lab.bench.compare import compare, parse_designs
    from ops.lab.bench.ledger import BATCH

    BATCH.update(linger_ms=batch_linger_ms)

    console = Console()
    if not console.is_terminal:
        console = Console(width=220)  # the tables are wide; logs and pipes should not wrap them
    try:
        designs = parse_designs(design)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--design") from exc
    kw = dict(accounts=accounts, transfers_n=transfers, paced_rate=paced_rate, paced_seconds=paced_seconds,
              pools=pool, variants=variant, sweep_n=sweep, workloads=workload,
              commit_interval=commit_interval, group_wait=group_wait, publish=publish, designs=designs,
              json_path=json_out, warmup_seconds=warmup_seconds, instances=instances, console=console)
    try:
        if isolated:
            from ops.lab.isolated import isolated_stack, settings_env

            with isolated_stack("paystream-compare-", console=console) as iso:
                compare(iso, env_extra=settings_env(iso), **kw)  # type: ignore[arg-type]
        else:
            compare(get_settings(), **kw)  # type: ignore[arg-type]
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command("failover")
def failover_cmd(
    accounts: int = typer.Option(100_000, help="accounts of ledger state, pre-filled once per --home"),
    mode: str = typer.Option("lost", help="lost: the killed instance stays down | restart: started again at once"),
    rate: float = typer.Option(2_000.0, help="transfers/s offered, open loop"),
    before: float = typer.Option(20.0, help="seconds of load before the kill"),
    after: float = typer.Option(45.0, help="seconds of load after it"),
    env: list[str] = typer.Option([], "--env", help="KEY=VALUE for the ledger instances (repeat)"),
    home: Path | None = typer.Option(None, help="the bench's own stack, kept between runs "
                                                "(default /tmp/paystream-failover-<accounts>)"),
    json_out: Path | None = typer.Option(None, "--json", help="append the run to this JSON file"),
) -> None:
    """Time to full throughput after kill -9 of one of three ledger instances, with this much state."""
    from ops.lab.bench.failover import failover

    console = Console()
    pairs = dict(e.split("=", 1) for e in env)
    root = home or Path(f"/tmp/paystream-failover-{accounts}")
    try:
        failover(accounts=accounts, mode=mode, rate=rate, before=before, after=after, env=pairs, root=root,
                 json_path=json_out, console=console)
    except (RuntimeError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
