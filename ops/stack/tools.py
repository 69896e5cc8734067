"""The programs the stack needs: one-off steps run to completion, tools on PATH, apt-get and Maven."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ops.stack.errors import StackError
from ops.stack.files import LOG_TAIL_LINES

# A cold Maven download of Kafka + Apicurio (~150 MB) on a slow link; not a readiness timeout.
DOWNLOAD_TIMEOUT = 1800.0
DONE_MARKER = ".paystream-complete"
JAVA_HINT = "install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"


def run_step(
    cmd: list[str],
    *,
    what: str,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a one-off step to completion; its output only matters if it fails."""
    try:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what}: timed out after {timeout:.0f}s") from exc
    output = result.stdout.decode("utf-8", errors="replace")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
        raise StackError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return output


def apt_install(package: str, what: str) -> None:
    """Install a Debian package, but only when we are root; otherwise say exactly what to run."""
    if os.geteuid() != 0:
        raise StackError(
            f"{what} is not installed. Install it with "
            f"`sudo apt-get install -y {package}` (or run paystream as root to let it do so)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_step(["apt-get", "update"], what="apt-get update", timeout=600, env=env)
    run_step(["apt-get", "install", "-y", package], what=f"apt-get install {package}", timeout=1200,
             env=env)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not on PATH; {hint}")
    return path


def maven_env() -> dict[str, str]:
    # -q hides progress but Maven still emits ANSI resets; no colours in our error messages.
    return {**os.environ, "MAVEN_OPTS": os.environ.get("MAVEN_OPTS", "") + " -Djansi.force=false",
            "TERM": "dumb"}
