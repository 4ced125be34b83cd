"""pytest fixture: a real SLURM cluster on this machine (munge, slurmctld, two slurmd nodes on 127.0.0.1).

It runs .ci/slurm.sh: `install` (apt-get the Debian packages when they are missing), `start` (reuses
daemons that already run), and after the test session `stop` — only when tests started them, so a
cluster a developer keeps running survives. Needs root (the Debian daemons run as root here);
skips with the reason when not root, when there is no apt-get, or when the packages cannot be installed.
A cluster that is installed but does not come up is a failure, not a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "slurm.sh"


def _script(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def _live_users(users: Path) -> list[Path]:
    """Test sessions using the cluster now: users/<pid> files whose process lives (stale ones removed)."""
    live = []
    for marker in users.glob("*"):
        try:
            os.kill(int(marker.name), 0)
            live.append(marker)
        except (ValueError, ProcessLookupError):
            marker.unlink(missing_ok=True)
        except PermissionError:
            live.append(marker)
    return live


@pytest.fixture(scope="session")
def slurm_cluster():
    """Yields the environment for SLURM clients: {"SLURM_CONF": path}.

    Session-scoped: started once for every SLURM test, stopped at the end. Test sessions running at the same
    time share one cluster (its ports are fixed); the last one out stops it if tests started it."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (Debian's slurmctld/slurmd/munge run as root here)")
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it (Debian: munge slurmctld "
                    "slurmd slurm-client)")
    install = _script("install")
    if install.returncode != 0:
        pytest.skip(f"could not install munge slurmctld slurmd slurm-client: {install.stderr.strip()[-500:]}")
    was_running = _script("status", timeout=60).returncode == 0
    start = _script("start", timeout=180)
    if start.returncode != 0:
        _script("stop", timeout=120)
        pytest.fail(f".ci/slurm.sh start failed:\n{start.stdout}\n{start.stderr}")
    conf = Path(_script("conf").stdout.strip())
    users, started_by_tests = conf.parent / "users", conf.parent / "started-by-tests"
    users.mkdir(exist_ok=True)
    me = users / str(os.getpid())
    me.touch()
    if not was_running:
        started_by_tests.touch()
    try:
        yield {"SLURM_CONF": str(conf)}
    finally:
        me.unlink(missing_ok=True)
        if started_by_tests.exists() and not _live_users(users):
            started_by_tests.unlink(missing_ok=True)
            stop = _script("stop", timeout=120)
            assert stop.returncode == 0, f".ci/slurm.sh stop failed:\n{stop.stdout}\n{stop.stderr}"
