"""Rendering: a plan becomes a run directory of runnable artifacts (plan.json, ds_config.json, launch
scripts, job.sbatch, Megatron arguments, README), all from the Jinja2 templates in templates/.

choose.py picks the Estimate to render (the plan's best, or a plan.json's with flags fixed), ds_config.py
derives every DeepSpeed setting from it, artifacts.py renders, validates and writes the directory."""
from .artifacts import RenderError, RenderOptions, RenderResult, render, render_files
from .ds_config import Schedule

__all__ = ["RenderError", "RenderOptions", "RenderResult", "Schedule", "render", "render_files"]
