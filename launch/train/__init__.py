"""shardplan's GPT-2 training program, driven by a rendered ds_config.json and plan.json."""
