"""Executor: runs a plan.json for real with torch.distributed (FA Pool and static TP x PP).

Nothing here imports torch at import time except the modules that run inside ranks.
"""
