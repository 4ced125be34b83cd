"""The GPT-2 of the training program: same logits as transformers' GPT-2, exact loss, recompute modes."""
import pytest
import torch

from shardplan.launch.train.model import (GPT, GPTConfig, autotp_partition_config, check_hf_shape,
                                          load_hf_state_dict, read_hf_config)

TINY = GPTConfig(n_layers=2, hidden=64, n_heads=4, ffn_hidden=256, vocab=512, max_seq_len=64)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():   # non-zero biases and LayerNorm affine, so a wrong transpose or name cannot hide
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path


def test_logits_match_transformers(hf_dir):
    import transformers
    ref = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").eval()
    ours = GPT(TINY)
    ours.load_state_dict(load_hf_state_dict(hf_dir), strict=True)
    ours.eval()
    idx = torch.randint(0, 512, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hf_shape_mismatch_names_both_values(hf_dir):
    other = GPTConfig(n_layers=3, hidden=64, n_heads=4, ffn_hidden=256, vocab=512, max_seq_len=64)
    check_hf_shape(TINY, read_hf_config(hf_dir), hf_dir)
    with pytest.raises(ValueError, match=r"n_layers: plan 3 vs checkpoint 2"):
        check_hf_shape(other, read_hf_config(hf_dir), hf_dir)


def test_loss_is_fp32_cross_entropy_and_recompute_is_exact():
    idx = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(0))
    x, y = idx[:, :-1], idx[:, 1:]
    grads = {}
    for mode in ("none", "full", "selective"):
        model = GPT(GPTConfig(**{**TINY.shape_dict(), "checkpointing": mode}), seed=3)
        loss = model(x, y)
        loss.backward()
        grads[mode] = (loss.item(), model.h[0].attn.c_attn.weight.grad.clone())
        expected = torch.nn.functional.cross_entropy(model(x).reshape(-1, 512), y.reshape(-1))
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    for mode in ("full", "selective"):
        assert grads[mode][0] == grads["none"][0]
        torch.testing.assert_close(grads[mode][1], grads["none"][1])


def test_same_seed_same_weights_per_module():
    a, b = GPT(TINY, seed=5), GPT(TINY, seed=5)
    c = GPT(TINY, seed=6)
    assert torch.equal(a.h[1].mlp.c_fc.weight, b.h[1].mlp.c_fc.weight)
    assert not torch.equal(a.h[1].mlp.c_fc.weight, c.h[1].mlp.c_fc.weight)
    assert not torch.equal(a.h[0].mlp.c_fc.weight[:64], a.h[1].mlp.c_fc.weight[:64])


def test_partition_config_names_every_projection():
    import re
    specs = autotp_partition_config()["layer_specs"]
    names = [n for n, _ in GPT(TINY).named_parameters() if n.endswith(".weight")]
    matched = {n for n in names for s in specs for p in s["patterns"] if re.search(p, n)}
    assert matched == {n for n in names if any(k in n for k in ("c_attn", "c_fc", "c_proj"))}
    assert "wte.weight" not in matched

