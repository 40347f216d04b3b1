"""The worker side of a step: the model runner (weights, KV-cache tensors, batch preparation, sampling),
CUDA-graph decode and CPU process settings. It receives `engine.step.SchedulerOutput` and returns
`engine.step.RunnerOutput`, nothing else."""
