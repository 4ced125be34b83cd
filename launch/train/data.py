"""Text files -> byte-level BPE tokens -> a memory-mapped token file -> deterministic per-rank batches."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus import write_default_corpus

EOT = "<|endoftext|>"


def unique_tmp(path: Path) -> Path:
    """A temporary name no other process writes to (one preparer per node may share the directory)."""
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


class DataError(ValueError):
    """Bad data or tokenizer input: the message names the value and the fix."""


def text_files(data: str | Path | None, cache_dir: Path) -> list[Path]:
    """The user's file, or every *.txt under the user's directory (sorted); the embedded corpus when None."""
    if data is None:
        return [write_default_corpus(cache_dir / "corpus")]
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {data}: no such file or directory; give a text file or a directory of *.txt files")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
    if not files:
        raise DataError(f"--data {data}: the directory holds no *.txt files")
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"--data {data}: the data is empty (0 bytes of text); give files with text in them")
    return files


def load_tokenizer(tokenizer_dir: str | Path | None, files: list[Path], vocab: int, cache_dir: Path):
    """The user's tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt), else one trained here.

    A locally trained byte-level BPE gets exactly the model's vocab size and is cached in the run dir,
    so a resumed run tokenizes identically.
    """
    from tokenizers import ByteLevelBPETokenizer, Tokenizer

    if tokenizer_dir is not None:
        d = Path(tokenizer_dir)
        if (d / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok = ByteLevelBPETokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
        else:
            raise DataError(f"--tokenizer {tokenizer_dir}: needs tokenizer.json, or vocab.json and merges.txt")
        source = str(d.resolve())
    else:
        cached = cache_dir / "tokenizer" / "tokenizer.json"
        if not cached.is_file():
            trainer = ByteLevelBPETokenizer()
            trainer.train([str(f) for f in files], vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
                          show_progress=False)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = unique_tmp(cached)
            trainer._tokenizer.save(str(tmp))
            os.replace(tmp, cached)
        tok = Tokenizer.from_file(str(cached))
        source = "trained:" + hashlib.sha256(cached.read_bytes()).hexdigest()[:16]
    size = tok.get_vocab_size()
    if size > vocab:
        raise DataError(f"tokenizer vocabulary ({size}) is larger than the model's vocab ({vocab}); "
                        f"plan the model with --vocab {size} (or more), or drop --tokenizer to train one of {vocab}")
    return tok, source


def token_file(files: list[Path], tokenizer, tokenizer_source: str, cache_dir: Path) -> Path:
    """Tokenize once into cache_dir/tokens-<key>.bin (uint16 when the vocab allows); reuse when unchanged."""
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    # Name, size and mtime identify a file cheaply (no hashing of large data); a copied run dir keeps its cache.
    key_src = json.dumps([tokenizer_source, [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir / f"tokens-{key}.bin"
    if path.is_file():
        return path
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        # Documents separated by blank lines are encoded in batches (fast, Rust threads).
        for enc in tokenizer.encode_batch([p for p in text.split("\n\n") if p.strip()]):
            ids.extend(enc.ids)
            if eot is not None:
                ids.append(eot)
    if not ids:
        raise DataError(f"data {', '.join(map(str, files))}: no tokens after tokenization; give files with text")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp, meta_tmp = unique_tmp(path), unique_tmp(path.with_suffix(".json"))
    np.asarray(ids, dtype=dtype).tofile(tmp)
    meta_tmp.write_text(json.dumps({"dtype": np.dtype(dtype).name, "tokens": len(ids), "tokenizer": tokenizer_source,
                                    "files": [str(f) for f in files]}))
    os.replace(meta_tmp, path.with_suffix(".json"))   # metadata first: the .bin appearing means both are there
    os.replace(tmp, path)
    return path


def open_tokens(path: Path) -> np.memmap:
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, windows: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(windows)


@dataclass(frozen=True)
class Sampler:
    """Which sequences a rank trains on, as a pure function of (step, micro_step, dp_rank).

    The token stream is cut into windows of seq_len + 1 tokens (stride seq_len); each epoch visits
    them in a permutation seeded by (seed, epoch). Global sample number
    step·G + micro_step·(dp·micro) + dp_rank·micro + i (G = global batch) picks a window, so data-parallel
    ranks read disjoint slices, every layout with the same global batch sees the same sequences per step,
    and a resumed run continues exactly where the step counter says.
    """

    n_tokens: int
    seq_len: int
    micro_batch: int
    grad_accum: int
    dp: int
    seed: int

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise DataError(f"data has {self.n_tokens} tokens, fewer than one sequence of seq_len+1 "
                            f"({self.seq_len + 1}); give more text or plan a shorter --seq-len")

    @property
    def windows(self) -> int:
        return (self.n_tokens - 1) // self.seq_len

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.dp

    def sample_ids(self, step: int, micro_step: int, dp_rank: int) -> list[int]:
        first = step * self.global_batch + micro_step * self.dp * self.micro_batch + dp_rank * self.micro_batch
        return list(range(first, first + self.micro_batch))

    def window(self, sample_id: int) -> int:
        epoch, index = divmod(sample_id, self.windows)
        return int(_permutation(self.seed, epoch, self.windows)[index])

    def batch(self, tokens: np.ndarray, step: int, micro_step: int, dp_rank: int):
        """(inputs, targets) int64 tensors of shape [micro_batch, seq_len]."""
        import torch
        rows = [np.asarray(tokens[w * self.seq_len: w * self.seq_len + self.seq_len + 1], dtype=np.int64)
                for w in map(self.window, self.sample_ids(step, micro_step, dp_rank))]
        block = torch.from_numpy(np.stack(rows))
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()
