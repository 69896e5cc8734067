"""Our child processes: starting them detached, waiting until they are ready, stopping them.

Pid files under ``<home>/run`` are the only record of ownership; a live pid
counts as ours only while the service recognises the process behind it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from ops.stack.errors import StackError
from ops.stack.files import LOG_TAIL_LINES, log_tail, write_atomic
from ops.stack.service import Service

READY_TIMEOUTS: dict[str, float] = {
    "postgres": 30.0, "redis": 15.0, "kafka": 90.0, "registry": 120.0,
}
STOP_TIMEOUT = 30.0
MIB = 1024 * 1024


# Popen objects of services started by this process. Kept so the children can
# be reaped if ``down`` runs in the same process (tests); otherwise they would
# linger as zombies that psutil reports as alive.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def error_with_log(message: str, log: Path, since: int = 0) -> StackError:
    """The log tail is the point: it is what says why Kafka or Postgres gave up."""
    return StackError(
        f"{message}\n--- last {LOG_TAIL_LINES} lines of {log} ---\n{log_tail(log, since=since)}"
    )


def is_gone(proc: psutil.Process) -> bool:
    popen = _CHILDREN.get(proc.pid)
    if popen is not None and popen.poll() is not None:
        _CHILDREN.pop(proc.pid, None)
        return True
    try:
        if not proc.is_running():
            return True
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(proc):
            return True
        time.sleep(0.1)
    return is_gone(proc)


def kill_group(pgid: int) -> None:
    """SIGKILL the whole session we started: a killed postmaster can leave forked helpers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def memory_mib(proc: psutil.Process) -> tuple[float | None, float | None, int]:
    """(RSS of the main process, PSS summed over its process tree, number of processes).

    RSS alone misleads for Postgres: every backend maps the same shared
    buffers, so summing RSS counts them once per connection. PSS splits shared
    pages between the processes mapping them, so the tree sum is what the
    service really costs.
    """
    try:
        rss = proc.memory_info().rss / MIB
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None, None, 0
    pss = 0
    for p in procs:
        try:
            pss += p.memory_full_info().pss
        except psutil.AccessDenied:
            return rss, None, len(procs)
        except psutil.Error:
            continue
    return rss, pss / MIB, len(procs)


def owned_process(svc: Service) -> psutil.Process | None:
    pid = read_pid(svc.pid_file)
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    if is_gone(proc) or not svc.is_ours(proc):
        return None
    return proc


def spawn(svc: Service) -> tuple[subprocess.Popen[bytes], int]:
    svc.layout.logs.mkdir(parents=True, exist_ok=True)
    user = svc.run_as()
    with svc.log_file.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"\n=== paystream stack: starting {svc.name} at {stamp} ===\n".encode())
        log.flush()
        offset = log.tell()
        try:
            popen = subprocess.Popen(
                svc.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=svc.workdir,
                env=svc.env(),
                start_new_session=True,
                close_fds=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        except OSError as exc:
            raise StackError(f"{svc.name}: could not start {svc.command()[0]}: {exc}") from exc
    _CHILDREN[popen.pid] = popen
    write_atomic(svc.pid_file, f"{popen.pid}\n")
    return popen, offset


def wait_ready(svc: Service, popen: subprocess.Popen[bytes], offset: int) -> None:
    timeout = READY_TIMEOUTS[svc.name]
    deadline = time.monotonic() + timeout
    while True:
        code = popen.poll()
        if code is not None:
            svc.pid_file.unlink(missing_ok=True)
            _CHILDREN.pop(popen.pid, None)
            raise error_with_log(f"{svc.name} exited with code {code} while starting",
                                 svc.log_file, since=offset)
        if svc.ready(offset):
            return
        if time.monotonic() > deadline:
            stop_process(svc, psutil.Process(popen.pid), timeout=5)
            svc.pid_file.unlink(missing_ok=True)
            raise error_with_log(
                f"{svc.name} (pid {popen.pid}) was not ready within {timeout:.0f}s; stopped it",
                svc.log_file,
                since=offset,
            )
        time.sleep(0.2)


def wait_healthy(svc: Service, proc: psutil.Process) -> None:
    """For a process of ours that is alive but not answering yet (e.g. still starting)."""
    timeout = READY_TIMEOUTS[svc.name]
    deadline = time.monotonic() + timeout
    while not svc.healthy():
        if is_gone(proc):
            svc.pid_file.unlink(missing_ok=True)
            raise error_with_log(f"{svc.name} (pid {proc.pid}) died", svc.log_file)
        if time.monotonic() > deadline:
            raise error_with_log(
                f"{svc.name} (pid {proc.pid}, started by paystream) is running but not healthy "
                f"after {timeout:.0f}s; try `paystream stack down` then `up`",
                svc.log_file,
            )
        time.sleep(0.5)


def stop_process(svc: Service, proc: psutil.Process, timeout: float = STOP_TIMEOUT) -> bool:
    """Graceful signal, then SIGKILL of the whole session; True if it needed the SIGKILL."""
    pid = proc.pid
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(svc.stop_signal)
    killed = False
    if not wait_gone(proc, timeout):
        kill_group(pid)
        killed = True
        if not wait_gone(proc, 10):
            raise StackError(f"{svc.name} (pid {pid}) survived SIGKILL")
    # Helpers forked by the service (Postgres backends, a Redis rewrite child) share its
    # session; pid == pgid because we started it with start_new_session=True.
    kill_group(pid)
    popen = _CHILDREN.pop(pid, None)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=1)
    return killed
