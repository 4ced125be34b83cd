"""The planner: pure Python, no torch import. The public API:

    from shardplan.planner import get_model, get_cluster, Training, plan, evaluate, compare, Layout
    model = get_model("gpt2-xl")
    cluster = get_cluster("2x8xA100-80GB")
    p = plan(model, cluster, Training(seq_len=1024, global_batch=512))
    p.best.layout, p.best.memory.peak_bytes, p.best.tokens_per_s, p.reasons
    evaluate(model, cluster, Layout(dp=16, zero_stage=2, micro_batch=8, grad_accum=4), Training(1024, 512))
    compare(model, cluster, Training(1024, 512))   # [(method name, Estimate), ...]
"""
from .cluster import Cluster, GPUType
from .compare import compare
from .estimate import Estimate, MemoryBreakdown, TimeBreakdown, Training
from .layout import Layout, ZeroStage
from .model import ModelSpec
from .evaluate import evaluate
from .plan import NothingFits, Plan, plan

__all__ = ["get_model", "get_cluster", "ModelSpec", "Cluster", "GPUType", "Layout", "ZeroStage", "Training",
           "Estimate", "MemoryBreakdown", "TimeBreakdown", "evaluate", "plan", "compare", "Plan", "NothingFits"]


def get_model(name_or_path: str, **overrides) -> ModelSpec:
    """A preset name, a Hugging Face config.json or model directory; overrides: layers, hidden, heads,
    kv_heads, ffn_hidden, vocab, seq_len (the model's max positions)."""
    from .presets import get_model as _get_model
    return _get_model(name_or_path, **overrides)


def get_cluster(spec: str, **overrides) -> Cluster:
    """"1xH200", "8xA100-40GB", "4x8xH100-80GB"; overrides: gpu_memory, intra_node_bw, inter_node_bw.
    "auto" (this machine's GPUs) is I/O, not planning: shardplan.launch.inventory.get_cluster resolves it."""
    from .cluster import parse_cluster
    return parse_cluster(spec, **overrides)
