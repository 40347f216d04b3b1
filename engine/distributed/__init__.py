"""Tensor parallelism: how a model's heads, MLP columns and vocabulary split across ranks (`partition`), and
the process groups the ranks talk over (`comm`). Only torch is needed here; the layers that use these live
in `engine.models.parallel`, the processes in `engine.executor`."""
