"""Data for the training program: corpus, tokenizer, token file, and the deterministic per-rank sampler."""
import numpy as np
import pytest

from shardplan.launch.train.corpus import corpus_text, write_default_corpus
from shardplan.launch.train.data import (DataError, Sampler, load_tokenizer, open_tokens, text_files,
                                         token_file)


def test_default_corpus_is_deterministic_and_sizeable(tmp_path):
    import torch  # noqa: F401  (imported libraries must not change the text: it is generated in isolation)
    a = write_default_corpus(tmp_path / "a").read_text()
    assert a == write_default_corpus(tmp_path / "b").read_text()
    assert 200_000 < len(a.encode()) < 5_000_000
    assert "Return" in a and corpus_text()[:60] == a[:60]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    files = text_files(None, cache)
    tok, source = load_tokenizer(None, files, 512, cache)
    return cache, files, tok, source, token_file(files, tok, source, cache)


def test_trained_tokenizer_has_model_vocab_and_token_file_is_cached(prepared):
    cache, files, tok, source, path = prepared
    assert tok.get_vocab_size() == 512
    tokens = open_tokens(path)
    assert tokens.dtype == np.uint16 and len(tokens) > 100_000 and int(tokens.max()) < 512
    assert token_file(files, tok, source, cache) == path   # unchanged inputs: reused
    text = "Return the number of items in a sequence."
    assert tok.decode(tok.encode(text).ids) == text          # byte-level BPE round-trips


def test_user_tokenizer_files_and_vocab_mismatch(prepared, tmp_path):
    cache, files, tok, _, _ = prepared
    user = tmp_path / "tok"
    user.mkdir()
    tok.save(str(user / "tokenizer.json"))
    same, source = load_tokenizer(user, files, 512, tmp_path / "c")
    assert same.get_vocab_size() == 512 and source == str(user.resolve())
    with pytest.raises(DataError, match=r"tokenizer vocabulary \(512\) is larger than the model's vocab \(256\).*--vocab 512"):
        load_tokenizer(user, files, 256, tmp_path / "c")
    with pytest.raises(DataError, match="vocab.json and merges.txt"):
        load_tokenizer(tmp_path, files, 512, tmp_path / "c")


def test_missing_and_empty_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        text_files(tmp_path / "nope.txt", tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        text_files(tmp_path / "empty.txt", tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="no \\*.txt files"):
        text_files(tmp_path / "d", tmp_path)
    with pytest.raises(DataError, match="fewer than one sequence"):
        Sampler(n_tokens=10, seq_len=32, micro_batch=1, grad_accum=1, dp=1, seed=0)


def test_sampler_slices_are_disjoint_and_layout_independent():
    tokens = np.arange(10_000, dtype=np.uint16)
    one = Sampler(n_tokens=len(tokens), seq_len=16, micro_batch=4, grad_accum=1, dp=1, seed=7)
    dp2 = Sampler(n_tokens=len(tokens), seq_len=16, micro_batch=1, grad_accum=2, dp=2, seed=7)
    for step in range(3):
        whole = one.batch(tokens, step, 0, 0)[0]
        parts = [dp2.batch(tokens, step, m, r)[0] for m in range(2) for r in range(2)]
        rows = {tuple(p[0].tolist()) for p in parts}
        assert len(rows) == 4                                       # ranks and micro-steps read disjoint samples
        assert rows == {tuple(r.tolist()) for r in whole}           # same sequences per step as one process
    x, y = one.batch(tokens, 0, 0, 0)
    assert x.shape == (4, 16) and np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())


def test_sampler_is_a_pure_function_of_the_step_and_covers_an_epoch():
    s = Sampler(n_tokens=1601, seq_len=16, micro_batch=2, grad_accum=1, dp=2, seed=3)
    assert s.windows == 100
    seen = [s.window(i) for step in range(25) for r in range(2) for i in s.sample_ids(step, 0, r)]
    assert sorted(seen) == list(range(100))                          # one epoch visits every window once
    again = Sampler(n_tokens=1601, seq_len=16, micro_batch=2, grad_accum=1, dp=2, seed=3)
    assert [again.window(i) for i in range(100, 110)] == [s.window(i) for i in range(100, 110)]
    assert [s.window(i) for i in range(100, 110)] != [s.window(i) for i in range(10)]   # next epoch reshuffles
