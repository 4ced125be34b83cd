"""The `shardplan` command. Each group of subcommands lives in its own module and is imported here;
nothing heavy (torch, deepspeed, jinja2) is imported at start-up so that `shardplan plan` stays fast."""
from __future__ import annotations

import click

from shardplan import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="shardplan")
def main() -> None:
    """Plan, render, validate and launch distributed training of transformer LMs on DeepSpeed.

    \b
    Typical flow:
      shardplan plan     --model gpt2-xl --cluster 2x8xA100-80GB --global-batch 512
      shardplan render   --model gpt2-xl --cluster 2x8xA100-80GB --global-batch 512 --out runs/gpt2xl
      shardplan validate runs/gpt2xl/ds_config.json
      shardplan launch   runs/gpt2xl
    """


def _register() -> None:
    # Subcommand modules register themselves on `main`; each owns its own commands.
    import importlib

    for module in ("cli_plan", "cli_render", "cli_validate", "cli_launch"):
        try:
            importlib.import_module(f"shardplan.launch.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"shardplan.launch.{module}":
                raise


_register()
