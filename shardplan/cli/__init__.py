"""The `shardplan` command: the click group and its subcommands, added explicitly from their modules.

Nothing heavy (torch, deepspeed, jinja2) is imported at start-up so that `shardplan plan` stays fast."""
from __future__ import annotations

import click

from shardplan import __version__
from shardplan.cli.launch import cancel, launch, logs, status
from shardplan.cli.plan import compare, estimate, plan
from shardplan.cli.render import render
from shardplan.cli.report import calibrate, report
from shardplan.cli.validate import validate


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
      shardplan report   runs/gpt2xl
    """


for _command in (plan, estimate, compare, render, validate, launch, status, logs, cancel, report, calibrate):
    main.add_command(_command)
