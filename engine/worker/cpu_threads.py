"""CPU threads of the model runner: how many intra-op threads, and OpenMP settings that degrade gracefully
when other processes use the same cores (laptops, shared VMs, CI machines).

Why a busy core hurts so much: a forward pass is hundreds of OpenMP parallel regions (every matmul and
norm), each split evenly over the threads and each ending at a barrier. When one of our threads shares its
core with another process, every region waits for that thread's next timeslice. By default GNU OpenMP
(the runtime in PyTorch's Linux wheels) spins at each barrier for ~300,000 iterations before it sleeps, so a
waiting thread burns its core and its scheduler credit, and the straggler gets no priority when it is
woken. With `OMP_WAIT_POLICY=PASSIVE` waiting threads sleep at once: a woken thread is favoured by the
Linux scheduler, the other process gets the idle core, and the slowdown falls from several-fold to about
what the lost core costs (docs/benchmarks.md, `make bench-busy-core`). Threads are not bound to cores
(`OMP_PROC_BIND` unset), so the scheduler can move a thread off a busy core.

GNU OpenMP reads these variables once, when it is loaded with torch, so `openmp_env_defaults` is applied by
the `kvserve` CLI before anything imports torch; a variable the user set always wins. `configure` is
called by the model runner: `--cpu-threads N`, or torch's own choice (`OMP_NUM_THREADS`, else one thread per
physical core).
"""

from __future__ import annotations

from collections.abc import MutableMapping

# Defaults for the OpenMP runtime; each applies only when the user has set none of the keys it names.
OPENMP_DEFAULTS: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
_OVERRIDDEN_BY = {"OMP_WAIT_POLICY": ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}


def openmp_env_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Set the OpenMP defaults in `environ` where the user has not chosen; returns what was set."""
    applied = {}
    for key, value in OPENMP_DEFAULTS.items():
        if not any(k in environ for k in _OVERRIDDEN_BY.get(key, (key,))):
            environ[key] = applied[key] = value
    return applied


def configure(requested: int | None) -> int:
    """Set torch's intra-op thread count for this process (the worker's) if asked; returns the count."""
    import torch

    if requested is not None:
        torch.set_num_threads(requested)
    return torch.get_num_threads()
