"""Measure before running: memory units, peak memory, and the batch-size planner."""
