"""kvserve's load tester: streams requests at an OpenAI-compatible server and measures TTFT, TPOT, ITL, E2EL,
throughput and goodput, beside the server's own /metrics deltas.

In-process API: `loadtest.runner.run_load(config)` / `run_load_sync(config)` with a `loadtest.config.LoadConfig`,
returning a `loadtest.runner.LoadResult`. See docs/loadtest.md.
"""
