"""Worker for tests/test_ulysses_model.py: DeepSpeed 0.19.8 with the Ulysses mpu (cp = world size) on CPU, gloo;
writes the sizes of the groups ZeRO uses and this rank's ZeRO partitions to OUT/rank<r>.json."""
import json
import os
import sys

import deepspeed
import torch

from shardplan.launch.train.ulysses import sequence_parallel_mpu

out, zero = sys.argv[1], int(sys.argv[2])
deepspeed.init_distributed(dist_backend="gloo")
cp = int(os.environ["WORLD_SIZE"])
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "sequence_parallel_size": cp,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
          "zero_optimization": {"stage": zero, "stage3_param_persistence_threshold": 0}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config,
                                  mpu=sequence_parallel_mpu(cp))
opt = engine.optimizer
if zero == 3:
    params = sum(p.ds_tensor.numel() for p in engine.module.parameters())
    master = sum(t.numel() for t in opt.fp32_partitioned_groups_flat)
else:
    params = sum(p.numel() for p in engine.module.parameters())
    master = sum(t.numel() for t in opt.single_partition_of_fp32_groups)
facts = {"seq_dp_world_size": engine.seq_dp_world_size,
         "total": sum(p.numel() for p in model.parameters()) if zero != 3 else sum(
             p.ds_numel for p in engine.module.parameters()), "params_held": params, "master_partition": master}
with open(os.path.join(out, f"rank{engine.global_rank}.json"), "w") as f:
    json.dump(facts, f)
