"""Parallel text: two aligned files, one sentence per line, plain or gzip; padded batches."""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .tokenizer import BOS_ID, EOS_ID, PAD_ID, SubwordTokenizer

__all__ = ["read_lines", "read_parallel", "find_split", "encode_pairs", "pad_batch"]


def read_lines(path: str) -> List[str]:
    """Lines of a UTF-8 text file (``.gz`` read transparently), without line ends.

    Raises:
        FileNotFoundError: missing file. ValueError: a truncated or corrupt gzip file, an unreadable file, or a
            line that is not UTF-8 (the message names the file and the line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: truncated or corrupt gzip file ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    out = []
    for i, raw in enumerate(lines, 1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} line {i}: not valid UTF-8 (byte {err.start + 1} is {raw[err.start]:#04x})") \
                from None
    return out


def read_parallel(src_path: str, tgt_path: str) -> Tuple[List[str], List[str]]:
    """Two aligned files.

    Raises:
        ValueError: a file has no lines, or the files have different numbers of lines (and see
            :func:`read_lines`).
    """
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not any(line.strip() for line in lines):
            raise ValueError(f"{path}: no sentences")
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: not aligned")
    return src, tgt


def find_split(folder: str, split: str, lang: str) -> str:
    """``folder/{split}.{lang}`` or ``folder/{split}.{lang}.gz``, whichever exists.

    Raises:
        FileNotFoundError: neither exists, or no such folder (the message says to pass --data).
    """
    for name in (f"{split}.{lang}", f"{split}.{lang}.gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no data folder {folder}: pass --data with a folder of {{split}}.{{lang}}[.gz] files, "
                                f"one sentence per line (Multi30k's: train, val, test_2016_flickr)")
    raise FileNotFoundError(f"no {split}.{lang}[.gz] in {folder} (--data)")


def encode_pairs(src: Sequence[str], tgt: Sequence[str], src_tok: SubwordTokenizer, tgt_tok: SubwordTokenizer,
                 max_len: int = 100, dropped: Optional[Dict[str, int]] = None) -> List[Tuple[List[int], List[int]]]:
    """Subword ids of each pair. Pairs with an empty side are dropped, and so are pairs with a side longer than
    ``max_len`` subwords (cut, the target would still end with ``</s>`` after a fragment of the translation of
    a fragment); ``dropped``, a dict, receives the counts as ``{"empty": n, "too_long": n}``."""
    pairs, empty, too_long = [], 0, 0
    for s, t in zip(src, tgt):
        s_ids, t_ids = src_tok.encode(s), tgt_tok.encode(t)
        if not (s_ids and t_ids):
            empty += 1
        elif max(len(s_ids), len(t_ids)) > max_len:
            too_long += 1
        else:
            pairs.append((s_ids, t_ids))
    if dropped is not None:
        dropped.update(empty=empty, too_long=too_long)
    return pairs


def pad_batch(seqs: Sequence[Sequence[int]], bos: bool = False, eos: bool = False):
    """Pad id lists into (B, L) with 0, optionally adding ``<s>`` / ``</s>``; returns (ids, lengths)."""
    seqs = [([BOS_ID] if bos else []) + list(s) + ([EOS_ID] if eos else []) for s in seqs]
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), max(1, int(lengths.max()))), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out, lengths
