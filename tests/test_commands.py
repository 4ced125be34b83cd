"""launch/commands.py: the (argv, env) builders behind launch.sh, launch_torchrun.sh, job.sbatch and `launch`."""
import os
import subprocess
import sys

import pytest

from shardplan.launch.commands import (SLURM_RENDEZVOUS_TIMEOUT_S, Command, RunSpec, ShellVar, command_for, deepspeed_command, sbatch_command,
                                       shell_join, shell_quote, srun_torchrun_line, torchrun_command)

NASTY = "/tmp/a b/it's $HOME `id`; rm -rf x \"q\" 50%"


def _echo_argv(line: str, *extra: str, env: dict | None = None) -> list[str]:
    """Run a shell line with `printf '%s\\0'` standing in for the program: the argv the shell produced."""
    out = subprocess.run(["bash", "-c", line, "x", *extra], capture_output=True, check=True,
                         env={**os.environ, **(env or {})})
    return out.stdout.decode().split("\0")[:-1]


def test_runspec_validates_input():
    with pytest.raises(ValueError, match="absolute"):
        RunSpec(run_dir="runs/x")
    with pytest.raises(ValueError, match="nodes"):
        RunSpec(run_dir="/r", nodes=0)
    with pytest.raises(ValueError, match="master_port"):
        RunSpec(run_dir="/r", master_port=70000)
    with pytest.raises(ValueError, match="lists 1 hosts for nodes"):
        RunSpec(run_dir="/r", nodes=2, hosts=("a",))
    with pytest.raises(ValueError, match="host"):
        RunSpec(run_dir="/r", hosts=("-oProxyCommand=x",))
    with pytest.raises(ValueError, match="shell variable"):
        ShellVar("A B")


def test_deepspeed_single_node_cpu():
    run = RunSpec(run_dir="/runs/demo", procs_per_node=2, cpu=True, python="/venv/bin/python", train_args=("--steps", "5"))
    cmd = deepspeed_command(run)
    assert cmd.argv == ("/venv/bin/python", "-u", "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                        "--master_addr", "127.0.0.1", "--master_port", "29500",
                        "--enable_each_rank_log", "/runs/demo/logs", "--module", "shardplan.launch.train",
                        "--run-dir", "/runs/demo", "--steps", "5")
    assert cmd.env == {"PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu"}
    assert command_for(run, "local") == cmd


def test_deepspeed_multi_node_needs_hosts_and_uses_hostfile():
    with pytest.raises(ValueError, match="host names"):
        deepspeed_command(RunSpec(run_dir="/r", nodes=2, procs_per_node=8))
    run = RunSpec(run_dir="/r", nodes=2, procs_per_node=8, hosts=("n1", "n2"), master_addr="n1")
    argv = deepspeed_command(run).argv
    assert argv[argv.index("--hostfile") + 1] == "/r/hostfile"
    assert "--no_ssh" not in argv and "DS_ACCELERATOR" not in deepspeed_command(run).env
    per_node = deepspeed_command(run, node_rank=1).argv
    assert per_node[per_node.index("--node_rank") + 1] == "1" and "--no_ssh" in per_node
    with pytest.raises(ValueError, match="node_rank"):
        deepspeed_command(run, node_rank=2)
    with pytest.raises(ValueError, match="local"):
        command_for(run, "local")


def test_torchrun_command_and_shell_var_node_rank():
    run = RunSpec(run_dir="/r", nodes=2, procs_per_node=4, master_addr="n1", master_port=1234)
    argv = torchrun_command(run, node_rank=1).argv
    assert argv[:4] == ("python3", "-u", "-m", "torch.distributed.run")
    pairs = dict(zip(argv[4:20:2], argv[5:20:2]))
    assert pairs == {"--nnodes": "2", "--node-rank": "1", "--nproc-per-node": "4", "--master-addr": "n1",
                     "--master-port": "1234", "--max-restarts": "0", "--log-dir": "/r/logs/node1", "--redirects": "3"}
    assert argv[-4:] == ("-m", "shardplan.launch.train", "--run-dir", "/r")
    line = shell_join(torchrun_command(run, node_rank=ShellVar("NODE_RANK")).argv)
    assert '"${NODE_RANK}"' in line
    assert _echo_argv("printf '%s\\0' " + line, env={"NODE_RANK": "1"}) == list(argv)


def test_quoting_is_inert_and_exact():
    run = RunSpec(run_dir=NASTY, procs_per_node=2, master_addr="h", python="py", train_args=("--data", NASTY))
    cmd = deepspeed_command(run).with_args("--steps", "3")
    # replace the interpreter by printf: the shell must hand over exactly our argv, nothing expanded
    line = "printf '%s\\0' " + shell_join(cmd.argv[1:])
    assert _echo_argv(line) == list(cmd.argv[1:])
    assert shell_quote(ShellVar("X")) == '"${X}"'
    assert _echo_argv("printf '%s\\0' " + shell_quote(ShellVar("X", prefix=NASTY + "/n")), env={"X": "7"}) == [NASTY + "/n7"]
    env_line = Command(("sh", "-c", 'printf "%s\\0" "$V"'), {"V": NASTY}).shell()
    assert _echo_argv(env_line) == [NASTY]


def test_srun_line_expands_node_id_per_task_and_passes_extra_args(tmp_path):
    run = RunSpec(run_dir=NASTY, nodes=2, procs_per_node=2, python="py")
    cmd = srun_torchrun_line(run)
    assert cmd.argv[:3] == ("srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1")
    out = cmd.argv[cmd.argv.index("--output") + 1]
    assert out.endswith("/logs/slurm-%j-node%n.out") and "50%%" in out  # a literal % escaped for SLURM
    # run the task's `bash -c` part as SLURM would on node 1: exec replaced by printf to see the argv
    script = cmd.argv[cmd.argv.index("-c") + 1]
    assert script.startswith("exec py ")
    fake = tmp_path / "py"
    fake.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "MASTER_ADDR": "node1", "MASTER_PORT": "20042"}
    got = _echo_argv(shell_join(("bash", "-c", script, "shardplan-node")) + ' "$@"', "--resume", "a b", env=env)
    expected = list(torchrun_command(RunSpec(run_dir=NASTY, nodes=2, procs_per_node=2, python="py",
                                             master_addr="node1", master_port=20042), node_rank=1).argv[1:])
    # ... plus the rendezvous timeout: SLURM starts every node at once, so a missing node ends the job early.
    at = expected.index("--master-port") + 2
    expected[at:at] = ["--rdzv-conf", f"timeout={SLURM_RENDEZVOUS_TIMEOUT_S}"]
    assert got == expected + ["--resume", "a b"]


def test_runspec_round_trips_through_a_dict():
    run = RunSpec(run_dir="/r", nodes=2, procs_per_node=4, hosts=("a", "b"), master_addr="a", master_port=1234,
                  cpu=True, python="/py", train_args=("--steps", "5"))
    assert RunSpec.from_dict(run.to_dict()) == run
    with pytest.raises(ValueError, match="unknown run spec keys"):
        RunSpec.from_dict({**run.to_dict(), "gpus": 8})


def test_sbatch_command():
    assert sbatch_command("/r").argv == ("sbatch", "--parsable", "/r/job.sbatch")
    assert command_for(RunSpec(run_dir="/r"), "slurm") == sbatch_command("/r")
    with pytest.raises(ValueError, match="scheduler"):
        command_for(RunSpec(run_dir="/r"), "mpi")


def test_deepspeed_runner_accepts_the_argv():
    """DeepSpeed's own argument parser reads our flags as meant (module mode, each-rank logs)."""
    from deepspeed.launcher.runner import parse_args

    run = RunSpec(run_dir="/r", nodes=2, procs_per_node=8, hosts=("n1", "n2"), master_addr="n1",
                  python=sys.executable)
    argv = deepspeed_command(run, node_rank=0).with_args("--resume").argv
    args = parse_args(list(argv[4:]))
    assert (args.module, args.no_ssh, args.node_rank, args.num_gpus, args.hostfile) == (True, True, 0, 8, "/r/hostfile")
    assert args.enable_each_rank_log == "/r/logs" and args.user_script == "shardplan.launch.train"
    assert args.user_args == ["--run-dir", "/r", "--resume"]
