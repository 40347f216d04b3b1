"""The engine's core: requests, KV blocks (pool and per-request manager) and the scheduler.

Nothing here touches torch or a device: it decides what runs each step and hands the runner plain data
(`engine.step`)."""
