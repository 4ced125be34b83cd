"""The planner: pure Python, no torch import."""
