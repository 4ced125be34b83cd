"""Running a rendered run directory: preflight checks, the job itself (local launcher, torchrun, SLURM),
its record (job.json), the ranks' processes and logs, and progress from metrics.jsonl."""
