"""shardplan: plan, render, validate and launch distributed transformer training.

The code lives in the repository's top-level rooms and is installed under this namespace:
`shardplan.planner` (pure, torch-free), `shardplan.launch` (files, processes, torch),
`shardplan.templates` (Jinja2 templates and JSON Schemas).
"""
__version__ = "0.1.0"
