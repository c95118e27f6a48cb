"""Specs, cost model, simpy simulator, plan search and plan.json for FA Pool."""
