"""The FLOP counts behind the MFU figures of scripts/benchmark.py, against torch's own counter."""
import os
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import benchmark  # noqa: E402

from showattend.captioning.network import Decoder  # noqa: E402
from showattend.captioning.losses import caption_loss  # noqa: E402
from showattend.captioning.captioner import Captioner  # noqa: E402
from showattend.captioning.config import ModelConfig
from showattend.captioning.vocab import Vocab  # noqa: E402


@pytest.mark.parametrize("L,D", [(49, 1280), (9, 64)])
def test_training_flops_equal_torch_count(L, D):
    """Forward and backward of one batch of captions of different lengths: every matrix product counted."""
    dec = Decoder(benchmark.V, D)
    feats, caps, lengths = benchmark.make_batch(6, L, D, "cpu")
    with FlopCounterMode(display=False) as counter:
        caption_loss(dec(feats, caps, lengths), caps)[0].backward()
    assert len(set(lengths)) > 1  # the batch shrinks over time: the count must follow it
    assert benchmark.training_flops(lengths, L, D) == counter.get_total_flops()


@pytest.mark.parametrize("L,D", [(49, 1280), (9, 64)])
def test_decode_flops_equal_torch_count(L, D):
    """Beam 3 over 13 steps (``<end>`` made improbable so that no image stops early), per image."""
    V = benchmark.V
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>"] + [f"w{i}" for i in range(V - 4)])
    dec = Decoder(V, D)
    cap = Captioner(dec, vocab, ModelConfig(), device="cpu")
    with torch.no_grad():
        dec.L_o.bias[vocab.end] = -30
    x = torch.randn(2, L, D)
    cap.decode(x, beam_size=3, max_len=13)  # makes the word table (one product per set of weights, not counted)
    with FlopCounterMode(display=False) as counter:
        results = cap.decode(x, beam_size=3, max_len=13)
    assert all(len(r.alphas) == 13 for r in results)  # every caption ran all 13 steps
    assert benchmark.decode_flops(L, D, 3, 13) * 2 == counter.get_total_flops()
