"""kvserve's HTTP server: an OpenAI-compatible API (FastAPI + uvicorn) in front of one `LLMEngine`.

The engine runs in its own thread (`engine_loop`); the asyncio event loop only parses, validates, tokenizes
(off-loop, in a worker thread) and streams. Modules, one job each:

    config          ServerConfig: the server's own flags and limits
    cli             `kvserve serve`: flags -> ServerConfig + EngineArgs -> uvicorn
    serving         the uvicorn server subclass: startup line, SIGTERM/SIGINT -> drain -> exit 0
    app             the FastAPI app: lifespan, exception handlers, routers
    context         ServerContext: everything one server owns (phase, engine loop, tokenizer, metrics)
    engine_loop     the engine thread: commands in, deltas out, failure handling
    request_stream  one request's async stream of engine deltas
    guard           ASGI middleware: API key, body-size limit, access log
    errors          APIError and the OpenAI error envelope
    protocol        pydantic request models (what clients may send)
    parsing         strict JSON body -> request model, pydantic errors -> 400 with `param`
    sampling        request model -> engine SamplingParams
    responses       engine deltas -> OpenAI response bodies, stream chunks and logprobs
    sse             the Server-Sent-Events response that aborts on client disconnect
    generation      after validation: submit to the engine, then stream or collect the answer
    routes_generate /v1/completions and /v1/chat/completions
    routes_admin    /health, /metrics, /v1/models, /tokenize, /detokenize
    metrics         ServerMetrics: the Prometheus registry and metric objects
    stat_logger     engine deltas + IterationStats -> ServerMetrics (the one translation point)
    process         `kvserve serve` as a child process (tests, benchmarks, scripts)
    bench_overhead  `python -m server.bench_overhead`: HTTP vs offline throughput

Replicas on Ray Serve (`kvserve serve --replicas N`; Ray is imported only there):

    ray_config      RayServeConfig: the --replicas flags (no Ray import)
    ray_cli         start or join Ray, deploy, serve until a signal
    ray_app         the deployments: ingress, engine replicas, replica directory
    ray_ingress     the ingress ASGI app: relay to a replica, merged /metrics, /metrics/targets
    ray_bridge      ForwardedRequest and driving the app above with it inside a replica
    ray_engine      EngineReplica: one ServerContext + app per replica
    ray_directory   the live replicas and their metrics endpoints (heartbeats)
    replica_metrics a replica's own /metrics listener
    metrics_merge   several replicas' expositions as one, labelled by replica
"""
