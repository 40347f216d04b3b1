"""Replicas on Ray Serve, end to end: tests/ray/ray_cases.py, run inside a private network namespace.

Ray binds its daemons and workers to the machine's interface address; inside a fresh network namespace the
loopback is the only interface, so everything stays on 127.0.0.1, and the PID namespace ends every process
Ray started when the cases finish. Skipped, with the reason, where Ray is not installed or namespaces cannot
be made (they need root and util-linux's `unshare`).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import netns_run  # noqa: E402

CASES = Path(__file__).with_name("ray_cases.py")
TIMEOUT_S = 1200


@pytest.mark.slow
def test_two_cpu_replicas_on_ray_serve_in_a_private_network_namespace():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'kvserve[ray]')")
    ok, why = netns_run.available()
    if not ok:
        pytest.skip(f"cannot make a private network namespace: {why}")
    with tempfile.TemporaryDirectory(prefix="kvs-ray-") as tmp:
        env = dict(os.environ, KVSERVE_IN_NETNS="1", PYTHONUNBUFFERED="1",
                   RAY_TMPDIR=tmp,  # Ray's sockets and logs, not the shared /tmp/ray
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),  # not written to ~/.ray
                   # Ray's memory monitor kills workers when the whole machine is short of memory, whoever
                   # uses it; on a shared test machine that is other people's jobs. The kernel's OOM killer stays.
                   RAY_memory_monitor_refresh_ms="0")
        cmd = netns_run.command([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                 "--timeout", str(TIMEOUT_S - 60), str(CASES)])
        run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    tail = (run.stdout + run.stderr)[-8000:]
    assert run.returncode == 0, tail
    assert " passed" in run.stdout and " skipped" not in run.stdout, tail
