"""GPU catalog, --cluster strings and their overrides."""
import json

import pytest

from shardplan.planner import get_cluster
from shardplan.planner.cluster import CATALOG, GB, GiB, Cluster, find_gpu, get_gpu, gpu_from_name, parse_cluster

REQUIRED = ("H100-80GB", "H100-PCIe", "H200", "A100-80GB", "A100-40GB", "V100-32GB", "V100-16GB", "L4", "L40S",
            "A10G", "RTX-4090", "MI250X", "MI300X", "GH200", "CPU")


def test_catalog_has_the_common_cards():
    assert set(REQUIRED) <= set(CATALOG)
    for name, gpu in CATALOG.items():
        assert gpu.name == name
        assert gpu.peak_tflops("fp32") <= gpu.peak_tflops("fp16")
        assert 0 < gpu.matmul_efficiency <= 1


def test_h100_h200_figures():
    h100, h200 = CATALOG["H100-80GB"], CATALOG["H200"]
    assert h100.bf16_tflops == h200.bf16_tflops == 989.0
    # the measured matmul ceiling on the H200: 800 of 989 TFLOP/s (DESIGN.md, calibration)
    assert h200.matmul_efficiency == h100.matmul_efficiency == pytest.approx(800 / 989, abs=0.005)
    assert 79 * GiB < h100.memory_bytes < 81559 * 2**20  # under nvidia-smi's memory.total, as torch reports
    assert 139 * GiB < h200.memory_bytes < 143771 * 2**20
    assert h200.hbm_gbps > h100.hbm_gbps and h100.nvlink_gbps > CATALOG["H100-PCIe"].nvlink_gbps


def test_v100_has_no_native_bf16():
    assert not CATALOG["V100-32GB"].bf16_native and CATALOG["A100-80GB"].bf16_native


@pytest.mark.parametrize("alias,name", [("H100", "H100-80GB"), ("h100", "H100-80GB"), ("A100", "A100-80GB"),
                                        ("a100-40gb", "A100-40GB"), ("h100_sxm", "H100-80GB"), ("V100", "V100-32GB"),
                                        ("rtx 4090", "RTX-4090"), ("mi300x", "MI300X"), ("cpu", "CPU")])
def test_aliases_are_case_insensitive(alias, name):
    assert find_gpu(alias) is CATALOG[name]


@pytest.mark.parametrize("spec,nodes,per_node,gpu", [("1xH200", 1, 1, "H200"), ("8xA100-40GB", 1, 8, "A100-40GB"),
                                                     ("4x8xH100-80GB", 4, 8, "H100-80GB"),
                                                     ("2x8xh100", 2, 8, "H100-80GB"), (" 16xMI300X ", 1, 16, "MI300X")])
def test_parse_cluster(spec, nodes, per_node, gpu):
    c = parse_cluster(spec)
    assert (c.nodes, c.gpus_per_node, c.gpu.name, c.world_size, c.source) == (nodes, per_node, gpu, nodes * per_node,
                                                                            "flag")


@pytest.mark.parametrize("name", list(CATALOG))
def test_spec_round_trips(name):
    c = parse_cluster(f"3x4x{name}")
    assert parse_cluster(c.spec) == c
    assert parse_cluster(f"1x{name}").spec == f"1x{name}"


def test_overrides():
    c = parse_cluster("2x8xA100-40GB", gpu_memory=32, intra_node_bw=200, inter_node_bw=25.5)
    assert c.gpu.memory_bytes == 32 * GB and c.gpu.nvlink_gbps == 200.0 and c.inter_node_gbps == 25.5
    assert c.to_dict()["gpu_memory_bytes"] == 32 * GB and c.to_dict()["intra_node_gbps"] == 200.0
    assert CATALOG["A100-40GB"].memory_bytes != 32 * GB  # the catalog is untouched
    assert parse_cluster("8xH200", gpu_memory=None, inter_node_bw=None) == parse_cluster("8xH200")
    assert get_cluster("8xH200", gpu_memory=100).gpu.memory_bytes == 100 * GB


@pytest.mark.parametrize("overrides,expect", [({"gpu_memory": 0}, "--gpu-memory(0) must be a positive number"),
                                              ({"inter_node_bw": -1}, "--inter-node-bw(-1)"),
                                              ({"intra_node_bw": "fast"}, "--intra-node-bw('fast')"),
                                              ({"memory": 80}, "unknown cluster override(s) memory")])
def test_bad_overrides(overrides, expect):
    with pytest.raises(ValueError) as e:
        parse_cluster("8xH100").with_overrides(**overrides)
    assert expect in str(e.value)


@pytest.mark.parametrize("spec", ["H100", "8H100", "x8xH100", "8x", "4x8x", "8 x H100", "", "8xH100 extra", "-1xH100",
                                  "0xH100", "2x0xH100"])
def test_malformed_cluster_strings_name_the_form(spec):
    with pytest.raises(ValueError) as e:
        parse_cluster(spec)
    msg = str(e.value)
    assert repr(spec) in msg and "[NODESx]GPUSxTYPE" in msg and "4x8xH100-80GB" in msg and "\n" not in msg


@pytest.mark.parametrize("spec,close", [("8xH1000", "H100-80GB"), ("8xA100-30GB", "A100-40GB"),
                                        ("2xMI350X", "MI300X"), ("1xL40", "L40S")])
def test_unknown_gpu_type_suggests_close_names(spec, close):
    with pytest.raises(ValueError) as e:
        parse_cluster(spec)
    msg = str(e.value)
    assert "unknown GPU type" in msg and repr(spec) in msg and close in msg and "--gpu-memory" in msg


def test_get_gpu_error_lists_the_catalog():
    with pytest.raises(ValueError, match="known: H100-80GB, H100-PCIe"):
        get_gpu("TPUv5")


def test_cluster_validates_and_serialises():
    with pytest.raises(ValueError, match=r"lists 1 hosts for nodes\(2\)"):
        Cluster(2, 8, CATALOG["H100-80GB"], hosts=("a",))
    d = json.loads(json.dumps(parse_cluster("4x8xH100-80GB").to_dict()))
    assert (d["nodes"], d["gpus_per_node"], d["gpu"], d["world_size"]) == (4, 8, "H100-80GB", 32)


def test_the_planner_does_not_detect_hardware():
    """--cluster auto runs nvidia-smi and reads the environment: launch/inventory does that, not the planner."""
    with pytest.raises(ValueError, match=r"launch\.inventory\.get_cluster\('auto'\)"):
        get_cluster("auto")


def test_from_dict_round_trips_what_plan_json_records():
    c = parse_cluster("2x8xA100-40GB", gpu_memory=32, intra_node_bw=200, inter_node_bw=25.5)
    c = Cluster(c.nodes, c.gpus_per_node, c.gpu, c.inter_node_gbps, hosts=("a", "b"), source="hostfile")
    back = Cluster.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c
    assert Cluster.from_dict(c.to_dict()).with_overrides(gpu_memory=40).gpu.memory_bytes == 40 * GB
    with pytest.raises(ValueError, match="needs nodes, gpus_per_node and gpu"):
        Cluster.from_dict({"gpu": "H200"})
    with pytest.raises(ValueError, match="unknown GPU type 'TPUv5'"):
        Cluster.from_dict({"nodes": 1, "gpus_per_node": 8, "gpu": "TPUv5"})


def test_blackwell_hopper_variants_and_amd_cards_with_their_low_precision_peaks():
    for name, fp8, fp4, domain in (("B200", 4500, 9000, 0), ("B300", 4500, 13500, 0), ("GB200", 5000, 10000, 72),
                                   ("GB300", 5000, 15000, 72), ("H800", 1979, 0, 0), ("H20", 296, 0, 0),
                                   ("MI325X", 2614.9, 0, 0), ("MI355X", 5033.2, 10066.3, 0)):
        g = CATALOG[name]
        assert (g.fp8_tflops, g.fp4_tflops, g.nvlink_domain) == (fp8, fp4, domain)
        assert abs(g.peak_tflops("fp8") / g.bf16_tflops - 2) < 0.01    # dense fp8 is twice bf16 on all of them
    assert CATALOG["H100-80GB"].peak_tflops("fp8") == 1979.0 and CATALOG["H800"].nvlink_gbps < 450
    with pytest.raises(ValueError, match="A100-80GB has no fp8 tensor cores: use --precision bf16"):
        CATALOG["A100-80GB"].peak_tflops("fp8")
    assert get_gpu("gb200-nvl72").name == "GB200" and gpu_from_name("NVIDIA H20").name == "H20"
    assert gpu_from_name("NVIDIA H200").name == "H200" and gpu_from_name("NVIDIA B200").name == "B200"


def test_the_nvlink_domain_spans_trays_on_nvl72_and_is_the_node_elsewhere():
    from shardplan.planner.comm import group_bandwidth
    rack = parse_cluster("18x4xGB200")
    assert (rack.world_size, rack.nvlink_domain, rack.to_dict()["nvlink_domain"]) == (72, 72, 72)
    assert parse_cluster("36x4xGB200").nvlink_domain == 72 and parse_cluster("4x8xH100").nvlink_domain == 8
    # tp 8 over two trays of an NVL72 rack runs at NVLink speed; over two HGX nodes it crosses the network
    assert group_bandwidth(rack, 8, 1)[0] == 900e9
    # (4 ranks of the group in each node: NCCL's channels use 4 NICs, 4 x 50 GB/s; planner/comm.py)
    assert group_bandwidth(parse_cluster("2x4xH100"), 8, 1)[0] == 200e9
    assert group_bandwidth(parse_cluster("36x4xGB200"), 2, 72)[0] == 50e9      # across racks: the network
    # --nvlink-domain: one override path, recorded and read back from plan.json's cluster
    two = parse_cluster("4x8xH100", nvlink_domain=16)
    assert two.nvlink_domain == 16 and group_bandwidth(two, 16, 1)[0] == 450e9
    assert Cluster.from_dict(json.loads(json.dumps(two.to_dict()))) == two
    assert Cluster.from_dict(rack.to_dict()) == rack
    with pytest.raises(ValueError, match=r"--nvlink-domain\(6\) must be a whole number of nodes"):
        two.with_overrides(nvlink_domain=6)


def test_every_catalog_card_knows_its_sms_and_nvidia_cards_their_compute_capability():
    """The GEMM model's wave quantization and Megatron-LM's architecture checks read these from the catalog."""
    from shardplan.launch.validate.megatron import arch_major
    from shardplan.planner.gpu_time import sm_count
    for name, gpu in CATALOG.items():
        if name != "CPU":
            assert gpu.sm_count > 0, name
        if not name.startswith("MI") and name != "CPU":
            assert gpu.arch_major in (7, 8, 9, 10), name
    assert [arch_major(n) for n in ("A100-80GB", "H100-80GB", "B200", "GB300", "MI300X")] == [8, 9, 10, 10, 9]
    assert sm_count(CATALOG["H100-PCIe"]) == 114 and sm_count(CATALOG["CPU"]) == 1
