"""`shardplan validate`: check DeepSpeed config files (schema, cross-field rules, DeepSpeed's own parser)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from shardplan.launch import rundir



def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} must be >= 1")
    return value


@click.command(context_settings={"max_content_width": 100})
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--world-size", type=int, callback=_positive, default=None,
              help="Total number of GPUs (processes). Default: what the batch numbers imply, else tp*pp.")
@click.option("--tp", type=int, callback=_positive, default=1, show_default=True,
              help="Tensor-parallel degree (default: tensor_parallel.autotp_size when the config sets it).")
@click.option("--pp", type=int, callback=_positive, default=1, show_default=True,
              help="Pipeline-parallel degree (default: pipeline.stages when the config sets a number).")
@click.option("--heads", type=int, callback=_positive, default=None,
              help="Attention heads of the model, to check that autotp_size divides them.")
@click.option("--allow-auto", is_flag=True,
              help='The config is used through the Hugging Face Trainer/Accelerate: "auto" values are warnings.')
@click.option("--no-deepspeed", is_flag=True, help="Skip DeepSpeed's own parser (schema and rules only; faster).")
@click.option("--strict", is_flag=True, help="Fail on warnings too (unknown keys, deprecated keys, ignored settings).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result per file (a JSON list) for scripts.")
@click.option("--megatron-lm", type=click.Path(file_okay=False), envvar="MEGATRON_LM",
              help="A Megatron-LM checkout: also run its own parse_args + validate_args on each run directory's "
                   "megatron_args.sh, with the plan's world size (env: MEGATRON_LM).")
def validate(files, world_size, tp, pp, heads, allow_auto, no_deepspeed, strict, as_json, megatron_lm):
    """Check DeepSpeed config files before a job spends GPU hours finding out.

    Three layers: a JSON Schema of every documented DeepSpeed key (types, ranges, unknown keys in the blocks
    where DeepSpeed refuses them), cross-field rules (train_batch_size = micro x grad_accum x dp with
    dp = world_size / (tp x pp); fp16 and bf16 not both on; ZeRO-2/3 not with pipeline parallelism;
    offload_param and partial offload only with ZeRO-3; "auto" values; features DeepSpeed removed), and
    DeepSpeed's own config parser when DeepSpeed is installed.

    FILE may be a run directory written by `shardplan render`: its ds_config.json is checked against the
    world size, tp, pp and heads in its plan.json (options given on the command line win).

    Exit status: 0 valid, 1 problems found (each with its JSON path, what is wrong and how to fix it),
    2 usage error (missing file, not JSON). Warnings do not fail unless --strict.

    \b
    Examples:
      shardplan validate runs/gpt2xl/ds_config.json
      shardplan validate runs/*/                             # run directories: sizes from plan.json
      shardplan validate ds_config.json --world-size 16 --tp 2 --pp 2
      shardplan validate configs/*.json --strict --json > report.json
      shardplan validate hf_ds_config.json --allow-auto      # a Hugging Face Trainer config
      shardplan validate runs/llama-mg --megatron-lm ~/Megatron-LM   # --engine megatron: Megatron's own checks

    A run directory rendered with --engine megatron has megatron_args.sh and no ds_config.json: give
    --megatron-lm (or MEGATRON_LM) to check it with Megatron-LM's own argument validation.
    """
    deepspeed_files, megatron_dirs = _split(files, megatron_lm)
    results, unreadable = _validate_all(deepspeed_files, world_size, tp, pp, heads, allow_auto, no_deepspeed,
                                        as_json)
    checks = [(d, _megatron_check(d, megatron_lm)) for d in megatron_dirs]
    failed = any(not (r.ok_strict() if strict else r.ok) for r in results) or any(not c.ok for _, c in checks)
    if as_json:
        passed = [{**r.to_dict(), "passed": r.ok_strict() if strict else r.ok} for r in results]
        passed += [{"file": str(d / rundir.MEGATRON_ARGS), "passed": c.ok, "ok": c.ok,
                    "megatron": {"ok": c.ok, "message": c.message, "notes": list(c.notes), "facts": c.facts}}
                   for d, c in checks]
        click.echo(json.dumps(passed, indent=2))
    else:
        for index, r in enumerate(results):
            if index in unreadable:
                click.echo(f"error: {r.problems[0].message}", err=True)
            else:
                _print_result(r, strict)
        for d, c in checks:
            click.echo(f"{d / rundir.MEGATRON_ARGS}: {'OK' if c.ok else 'INVALID'} (Megatron-LM's parse_args + "
                       f"validate_args)")
            click.echo(f"  {c.message}")
            for note in c.notes:
                click.echo(f"  note: {note}")
    sys.exit(2 if unreadable else 1 if failed else 0)


def _split(files, megatron_lm) -> tuple[list[str], list[Path]]:
    """(files for the DeepSpeed checks, run directories whose megatron_args.sh Megatron-LM checks)."""
    deepspeed, megatron = [], []
    for name in files:
        path = Path(name)
        has_args = path.is_dir() and (path / rundir.MEGATRON_ARGS).is_file()
        megatron_only = has_args and not (path / rundir.DS_CONFIG).exists()
        if megatron_only and not megatron_lm:
            raise click.UsageError(f"{path} is a Megatron-LM run (megatron_args.sh, no ds_config.json): give "
                                   "--megatron-lm PATH (or MEGATRON_LM) to check it with Megatron-LM's own "
                                   "validate_args")
        if has_args and megatron_lm:
            megatron.append(path)
        if not megatron_only:
            deepspeed.append(name)
    return deepspeed, megatron


def _megatron_check(run_dir: Path, megatron_lm):
    from shardplan.launch.validate.megatron import check_megatron_args

    try:
        return check_megatron_args(run_dir, Path(megatron_lm))
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _validate_all(files, world_size, tp, pp, heads, allow_auto, no_deepspeed, as_json):
    from shardplan.launch.validate import (ConfigFileError, Problem, ValidationResult, read_config_file,
                                           validate_config)

    results = []
    unreadable: set[int] = set()  # indexes of files that are missing or not JSON: usage errors, exit 2
    for index, name in enumerate(files):
        if not as_json and len(files) > 1:
            click.echo(f"[{index + 1}/{len(files)}] {name}", err=True)
        sizes = dict(world_size=world_size, tp=tp, pp=pp, heads=heads)
        if Path(name).is_dir():
            name, sizes = _from_run_dir(Path(name), sizes)
        try:
            data, file_problems = read_config_file(name)
        except ConfigFileError as e:
            unreadable.add(index)
            results.append(ValidationResult((Problem("$", str(e), "make it a readable JSON file", source="json"),),
                                            file=name))
            continue
        try:
            result = validate_config(data, **sizes, use_deepspeed=not no_deepspeed, allow_auto=allow_auto)
        except ValueError as e:  # bad sizes (never a bad config)
            raise click.UsageError(str(e)) from None
        results.append(ValidationResult(tuple(file_problems) + result.problems, result.world_size,
                                        result.world_size_source, result.deepspeed_checked, result.notes, str(name)))

    return results, unreadable


def _from_run_dir(run_dir: Path, sizes: dict) -> tuple[Path, dict]:
    """A render run directory: check its ds_config.json with the sizes its plan.json records (the contract in
    CONTRACTS.md: plan["best"]["layout"] and plan["best"]["model"]); explicit options win."""
    ds_config = run_dir / rundir.DS_CONFIG
    if not (run_dir / rundir.PLAN).is_file():
        return ds_config, sizes
    try:
        plan = rundir.read_plan(run_dir, need=("model", "layout"))
        layout = rundir.plan_layout(plan, run_dir)
        from_plan = {"world_size": layout.world_size, "tp": layout.tp, "pp": layout.pp,
                     "heads": plan["best"]["model"]["n_heads"]}
    except (ValueError, KeyError, TypeError) as e:
        raise click.UsageError(f"{run_dir / rundir.PLAN}: not a shardplan plan.json ({type(e).__name__}: {e})") from None
    defaults = {"world_size": None, "tp": 1, "pp": 1, "heads": None}
    merged = {k: (sizes[k] if sizes[k] != defaults[k] else from_plan[k]) for k in defaults}
    return ds_config, merged


def _print_result(r, strict: bool) -> None:
    verdict = "OK" if (r.ok_strict() if strict else r.ok) else "INVALID"
    counts = f"{len(r.errors)} error(s), {len(r.warnings)} warning(s)"
    world = {"given": "given", "batch": "implied by the batch sizes", "default": "assumed"}[r.world_size_source]
    click.echo(f"{r.file}: {verdict} ({counts}; world size {r.world_size} {world})")
    for p in r.problems:
        click.echo(f"  {p.severity:7} {p.path}  [{p.source}]")
        click.echo(f"          {p.message}")
        click.echo(f"          fix: {p.fix}")
    for note in r.notes:
        click.echo(f"  note: {note}")
