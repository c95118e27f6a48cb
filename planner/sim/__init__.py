"""The simpy machine (engine) and the per-strategy programs that run on it."""
