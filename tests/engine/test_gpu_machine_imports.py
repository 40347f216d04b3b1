"""The GPU check runs on a machine that has torch, triton, transformers, safetensors, httpx, prometheus_client,
pytest and hypothesis, and none of the server's or the optional libraries (../shared/guide/gpu.md). Everything
`scripts/gpu_check.sh` runs must import there: the bench subcommand, the kernel benchmark, the summary and
the GPU tests. Here those modules are imported in a child process in which the missing packages cannot be
found, so a new top-level import of one of them in engine/ or kernels/ fails this test, not the GPU run."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_ON_THE_GPU_MACHINE = ("fastapi", "uvicorn", "starlette", "pydantic", "gguf", "ray", "xgrammar", "llguidance",
                          "schemathesis", "psutil", "openai", "matplotlib", "lm_eval", "torchao", "websockets")
GPU_TESTS = ["tests/kernels/test_gpu_elementwise.py", "tests/kernels/test_gpu.py", "tests/engine/test_gpu_engine.py"]

CHILD = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = set(sys.argv[1].split(","))

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import runpy
    import engine.llm, engine.tools.bench, engine.executor.worker, kernels.bench
    from engine.cli import main
    try:
        main(["bench", "--help"])
    except SystemExit as e:
        assert e.code == 0, e.code
    tests, sys.argv = sys.argv[2:], ["gpu_summary.py", "--help"]
    try:
        runpy.run_path("scripts/gpu_summary.py", run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), e.code
    import pytest
    sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *tests]))
""")


def test_what_the_gpu_check_runs_imports_without_the_server_and_optional_packages():
    r = subprocess.run([sys.executable, "-c", CHILD, ",".join(NOT_ON_THE_GPU_MACHINE), *GPU_TESTS], cwd=ROOT,
                       capture_output=True, text=True, timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                         "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "error" not in r.stdout.lower().split("collected")[-1], r.stdout[-2000:]
