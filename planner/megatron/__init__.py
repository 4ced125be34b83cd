"""The Megatron-core engine: memory (memory.py) and step time (time.py) of Megatron-LM's pretrain_gpt.py on
megatron-core, read from its source (megatron/core/distributed, optimizer, pipeline_parallel, transformer).
What the engine can run at all is planner/engines.py."""
