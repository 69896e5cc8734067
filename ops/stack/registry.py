"""Apicurio Registry (Confluent-compatible API), storing its schemas in the stack's Postgres."""

from __future__ import annotations

import os
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import psutil
from rich.console import Console

from ops.stack.errors import StackError
from ops.stack.postgres import Postgres
from ops.stack.service import Service
from ops.stack.tools import DONE_MARKER, DOWNLOAD_TIMEOUT, JAVA_HINT, maven_env, require_tool, run_step

# Apicurio 3.0.9's parent POM (io.apicurio:apicurio-registry:3.0.9) is not on
# Maven Central, and maven-dependency-plugin 3.x insists on reading it even for
# a single-artifact copy. 2.8 (Maven 3.8's built-in default) copies the
# artifact without the descriptor; pinning it keeps newer Mavens working too.
APICURIO_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:2.8:copy"


class Registry(Service):
    name = "registry"

    @property
    def dist_dir(self) -> Path:
        return self.layout.cache / f"apicurio-{self.settings.apicurio_version}"

    @property
    def runner_jar(self) -> Path:
        return self.dist_dir / f"apicurio-registry-app-{self.settings.apicurio_version}-runner.jar"

    @property
    def local_url(self) -> str:
        # Not settings.registry_url: that may be overridden to point at a remote registry.
        return f"http://127.0.0.1:{self.settings.registry_port}/apis/ccompat/v7"

    def ports(self) -> tuple[int, ...]:
        return (self.settings.registry_port,)

    def _downloaded(self) -> bool:
        return (self.dist_dir / DONE_MARKER).exists() and self.runner_jar.exists()

    def preflight(self) -> None:
        require_tool("java", JAVA_HINT)
        if not self._downloaded():
            require_tool("mvn", "Maven fetches the Apicurio distribution (apt-get install maven)")

    def _download(self, console: Console) -> None:
        version = self.settings.apicurio_version
        console.print(f"[dim]registry: fetching Apicurio Registry {version} with Maven "
                      "(one-off, ~110 MB)[/dim]")
        shutil.rmtree(self.dist_dir, ignore_errors=True)
        self.dist_dir.mkdir(parents=True)
        run_step(
            [
                "mvn", "-q", "-B", APICURIO_COPY_GOAL,
                f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
                f"-DoutputDirectory={self.dist_dir}",
            ],
            what=f"Maven download of Apicurio Registry {version}",
            timeout=DOWNLOAD_TIMEOUT,
            cwd=self.dist_dir,
            env=maven_env(),
        )
        archives = list(self.dist_dir.glob("apicurio-registry-app-*.tar.gz"))
        if not archives:
            raise StackError(f"Maven finished but no Apicurio archive in {self.dist_dir}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(self.dist_dir, filter="data")
        archives[0].unlink()  # the local Maven repository keeps a copy
        if not self.runner_jar.exists():
            raise StackError(f"{self.runner_jar} missing after unpacking {archives[0].name}")
        (self.dist_dir / DONE_MARKER).write_text(f"{datetime.now(UTC).isoformat()}\n")

    def prepare(self, console: Console) -> None:
        if not self._downloaded():
            self._download(console)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        s = self.settings
        return [
            "java", f"-Xmx{s.registry_heap}", "-Djava.awt.headless=true",
            self._marker(),
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={s.registry_port}",
            "-Dapicurio.storage.kind=sql",
            "-Dapicurio.storage.sql.kind=postgresql",
            f"-Dapicurio.datasource.url=jdbc:postgresql://127.0.0.1:{s.postgres_port}/registry",
            f"-Dapicurio.datasource.username={s.postgres_user}",
            "-jar", str(self.runner_jar),
        ]

    def env(self) -> dict[str, str] | None:
        # Quarkus maps APICURIO_DATASOURCE_PASSWORD to apicurio.datasource.password; unlike a
        # -D flag it does not show up in `ps`.
        password = Postgres(self.settings).password(create=False)
        return {**os.environ, "APICURIO_DATASOURCE_PASSWORD": password}

    def is_ours(self, proc: psutil.Process) -> bool:
        try:
            return self._marker() in proc.cmdline()
        except psutil.Error:
            return False

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.local_url}/subjects", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def after_ready(self, fresh: bool) -> None:
        import httpx

        if not fresh:
            return  # the level is stored in Postgres; once per start is enough
        # Project policy: consumers must be able to read data written with the previous schema.
        response = httpx.put(
            f"{self.local_url}/config",
            json={"compatibility": "BACKWARD"},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            timeout=10,
        )
        if response.status_code != 200:
            raise StackError(
                f"registry: setting global compatibility to BACKWARD failed: "
                f"HTTP {response.status_code} {response.text[:500]}"
            )
