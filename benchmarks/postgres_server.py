"""A throwaway PostgreSQL server for the tests and benchmarks: a cluster in a temporary folder, on a free
loopback port, removed when the block ends.

    with throwaway_cluster() as url:   # postgresql://fcagent@127.0.0.1:PORT/postgres
        TraceStore(url)

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged user (`postgres`,
else `nobody`). Its databases sort text by ICU's en-US rules where the server has ICU (as a user's server
often sorts by its locale), so the tests show that fcagent's ordering does not depend on it. `.ci/run`
starts its own cluster the same way in bash, for the whole test run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["throwaway_cluster", "find_binaries", "MISSING"]

MISSING = ("PostgreSQL's server binaries (initdb, pg_ctl, postgres) were not found on PATH, in /usr/local/bin or "
           "/usr/lib/postgresql/*/bin (Debian: apt-get install postgresql)")


def find_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None."""
    found = shutil.which("initdb")
    candidates = [Path(found).parent] if found else []
    candidates.append(Path("/usr/local/bin"))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_cluster(*, durable: bool = False) -> Iterator[str]:
    """Start a cluster; yield its URL; stop and remove it. `durable`: PostgreSQL's default settings (what a
    benchmark measures); else fsync off (a test's data need not survive a power cut)."""
    folder = find_binaries()
    if folder is None:
        raise FileNotFoundError(MISSING)
    work = Path(tempfile.mkdtemp(prefix="fcagent-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses root: run it as an unprivileged user
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None:
            raise FileNotFoundError("running as root and there is no unprivileged user (postgres, nobody) to run "
                                    "PostgreSQL as")
        shutil.chown(work, user)
        prefix = ["runuser", "-u", user, "--"]
    data = work / "data"
    try:
        base = [*prefix, str(folder / "initdb"), "-D", str(data), "-A", "trust", "-U", "fcagent", "-E", "UTF8",
                "--no-sync"]
        made = subprocess.run([*base, "--locale-provider=icu", "--icu-locale=en-US", "--locale=C.UTF-8"],
                              capture_output=True, text=True)
        if made.returncode != 0:  # a server built without ICU: its own locale
            shutil.rmtree(data, ignore_errors=True)
            subprocess.run(base, check=True, capture_output=True, text=True)
        settings = "" if durable else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for _ in range(3):  # the port was free a moment ago; another process may have taken it since
            port = _free_port()
            started = subprocess.run([*prefix, str(folder / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w",
                                      "-o", f"-p {port} -k {work} -c listen_addresses=127.0.0.1 "
                                      f"-c max_connections=200{settings}", "start"], capture_output=True, text=True)
            if started.returncode == 0:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {(work / 'log').read_text()[-2000:]}")
        try:
            yield f"postgresql://fcagent@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*prefix, str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
