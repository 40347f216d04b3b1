"""engine/worker/cpu_threads.py: OpenMP defaults that a user's own settings always override."""

from __future__ import annotations

import subprocess
import sys

from engine.worker.cpu_threads import configure, openmp_env_defaults


def test_passive_waiting_is_the_default():
    env: dict[str, str] = {}
    assert openmp_env_defaults(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_a_users_own_setting_wins():
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}):
        env = dict(chosen)
        assert openmp_env_defaults(env) == {} and env == chosen


def test_the_cli_sets_the_defaults_before_torch_is_loaded():
    code = ("import os, sys; from engine.cli import main; loaded = 'torch' in sys.modules; "
            "main(['plan', '--model-config', 'llama-3.1-8b', '--gpu', 'H100']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE False", out.stdout + out.stderr


def test_configure_sets_the_requested_thread_count_and_leaves_torch_choice_otherwise():
    import torch

    before = torch.get_num_threads()
    try:
        assert configure(1) == 1 == torch.get_num_threads()
        assert configure(None) == 1
    finally:
        torch.set_num_threads(before)
