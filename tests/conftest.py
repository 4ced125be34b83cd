"""Shared test settings: everything torch-side runs on CPU with gloo."""
import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The real SLURM test cluster (munge, slurmctld, two slurmd on 127.0.0.1), one per session.
from slurm_cluster import slurm_cluster  # noqa: E402,F401
