"""The simpy machine (engine) and the runner that costs and runs a schedule on it."""
