"""Fuzzing validate: configs generated from the schema and mutations of known configs never make the
validator raise (it only reports), and a config valid per the schema draws no schema problem.

Generation: objects with listed properties are built with st.fixed_dictionaries (each key optional) and
every value below them with hypothesis-jsonschema's from_schema. hypothesis-jsonschema 0.23.1 cannot
generate objects that list properties under Hypothesis >= 6.170 (it calls the removed
`cu.many(...).more()`), so the object level is done here; leaves and arrays still come from
from_schema.
"""
from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from shardplan.launch.validate import Problem, ValidationResult, load_schema, validate_config

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=8) | st.just("auto"),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3),
                           max_leaves=8)


def strategy_for(schema: dict[str, Any]) -> st.SearchStrategy:
    if "anyOf" in schema:
        return st.one_of([strategy_for(branch) for branch in schema["anyOf"]])
    props = schema.get("properties")
    if props:
        optional = {key: strategy_for(sub) for key, sub in props.items() if sub.get("not") != {}}
        return st.fixed_dictionaries({}, optional=optional)
    if schema.get("type") == "array" and "properties" in schema.get("items", {}):
        return st.lists(strategy_for(schema["items"]), max_size=3)
    if schema.get("type") == "object":  # free-form (optimizer params, data_efficiency, ...)
        return st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    if set(schema) <= {"description", "deprecated"}:
        return json_values  # removed keys: any value
    return from_schema({k: v for k, v in schema.items() if k not in ("deprecated",)})


# The top level without the removed features: those make every config an error, which would hide the rest.
_TOP = load_schema()
schema_valid_configs = strategy_for({"properties": {k: v for k, v in _TOP["properties"].items()
                                                    if set(v) - {"description"}}})


def _check(result: ValidationResult) -> None:
    assert isinstance(result, ValidationResult)
    for p in result.problems:
        assert isinstance(p, Problem) and p.path and p.message and p.fix


@FUZZ
@given(config=schema_valid_configs, world_size=st.sampled_from([None, 1, 8]), pp=st.sampled_from([1, 2]))
def test_schema_valid_configs_never_crash_and_pass_the_schema(config, world_size, pp):
    result = validate_config(config, world_size=world_size, pp=pp, heads=12)
    _check(result)
    assert not [p for p in result.problems if p.source == "schema"], [str(p) for p in result.problems]


KNOWN = [
    {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
     "bf16": {"enabled": True}, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"},
                                                      "offload_optimizer": {"device": "cpu", "ratio": 0.5}},
     "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}, "gradient_clipping": 1.0},
    {"train_micro_batch_size_per_gpu": "auto", "fp16": {"enabled": "auto", "loss_scale": 0},
     "zero_optimization": {"stage": 2, "overlap_comm": True}, "tensor_parallel": {"autotp_size": 2},
     "pipeline": {"stages": 2}, "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}},
]


@st.composite
def mutated(draw) -> tuple[dict[str, Any], list]:
    config = copy.deepcopy(draw(st.sampled_from(KNOWN)))
    for _ in range(draw(st.integers(1, 4))):
        node, path = config, []
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict):
                break
            node, path = node[key], path + [key]
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["set", "delete", "new"]))
        if action == "delete" and node:
            del node[draw(st.sampled_from(sorted(node)))]
        elif action == "set" and node:
            node[draw(st.sampled_from(sorted(node)))] = draw(json_values)
        else:
            node[draw(st.sampled_from(["stage", "enabled", "zero_optimisation", "amp", "ratio", "device",
                                       "train_batch_size", "autotp_size", "stages", "x"]))] = draw(json_values)
    return config


@FUZZ
@given(config=mutated(), world_size=st.sampled_from([None, 1, 3, 8]), tp=st.sampled_from([1, 2]),
       use_deepspeed=st.booleans())
def test_mutated_configs_never_crash(config, world_size, tp, use_deepspeed):
    _check(validate_config(config, world_size=world_size, tp=tp, use_deepspeed=use_deepspeed))


@FUZZ
@given(config=json_values)
def test_any_json_value_never_crashes(config):
    _check(validate_config(config, use_deepspeed=False))
