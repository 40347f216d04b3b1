"""Tools beside the runtime path: the offline benchmark, the capacity planner and its arithmetic."""
