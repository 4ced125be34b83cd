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
    # Each subcommand module registers its commands on `main` when imported; their heavy imports stay
    # inside the command functions.
    from shardplan.launch import cli_launch, cli_plan, cli_render, cli_validate  # noqa: F401


_register()
