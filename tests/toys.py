"""Toy data for the engine and host-read tests: captions over a hand-made feature cache, parallel text."""
import json

import numpy as np
import pytest
import torch

from showattend.captioning.cache import FeatureStore
from showattend.captioning.data import CaptionRecord
from showattend.captioning.config import ModelConfig
from showattend.captioning.task import CaptionTask
from showattend.captioning.train import TrainConfig
from showattend.captioning.vocab import Vocab

WORDS = ["a", "red", "green", "blue", "square", "box", "on", "white", "big", "small"]


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="no CUDA device"))]


def toy_caption_task(tmp_path, attention="soft", n_images=12, device="cpu", fine_tune_blocks=0, objective=None,
                     **cfg):
    """A CaptionTask over a synthetic feature cache (L=4, D=1280, the Lite0 size; with ``fine_tune_blocks`` 1,
    Lite0's trunk activations below its head, D=320): 10 train images, 2 val."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cache"
    folder.mkdir(exist_ok=True)
    keys = [f"{i}.jpg" for i in range(n_images)]
    D = 320 if fine_tune_blocks else 1280
    np.save(folder / "features.npy", rng.standard_normal((n_images, 4, D)).astype(np.float16))
    (folder / "index.json").write_text(json.dumps({"encoder": "efficientnet_lite0", "image_size": 224,
                                                   "keys": keys, "L": 4, "D": D}))
    store = FeatureStore(str(folder))
    records = [CaptionRecord(k, "train" if i < n_images - 2 else "val",
                             [[str(w) for w in rng.choice(WORDS, size=2 + (i + j) % 5)] for j in range(3)])
               for i, k in enumerate(keys)]
    vocab = Vocab.build([t for r in records for t in r.tokens], 1)
    model_cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8, dropout=0.0, attention=attention,
                            fine_tune_blocks=fine_tune_blocks)
    cfg = TrainConfig(**{"out_dir": str(tmp_path / "run"), "batch_size": 6, "val_beam_size": 1, "progress": False,
                         "device": device, **cfg})
    torch.manual_seed(0)
    task = CaptionTask(model_cfg, cfg, [r for r in records if r.split == "train"],
                       [r for r in records if r.split == "val"], store, vocab, torch.device(device),
                       **({"objective": objective} if objective else {}))
    return task, cfg


def toy_translation_task(tmp_path, device="cpu"):
    from showattend.translation.config import TranslationTrainConfig, TranslatorConfig
    from showattend.translation.network import Seq2Seq
    from showattend.translation.task import TranslationTask
    from showattend.translation.translator import Translator

    src = [[4 + (i + j) % 7 for j in range(2 + i % 5)] for i in range(24)]
    pairs = [(s, [x + 1 for x in reversed(s)]) for s in src]
    cfg = TranslationTrainConfig(out_dir=str(tmp_path / "mt"), batch_size=6, progress=False, device=device)
    torch.manual_seed(0)
    model = Seq2Seq(TranslatorConfig(src_vocab_size=12, tgt_vocab_size=13, embed_dim=8, encoder_hidden=8,
                                        decoder_hidden=16, attention_dim=8, dropout=0.0))
    return TranslationTask(Translator(model, None, None, torch.device(device)), cfg, pairs, [], []), cfg


def write_toy_parallel(root):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = ["ein", "hund", "katze", "läuft", "schläft", "auf", "gras"]
    english = dict(zip(words, ["a", "dog", "cat", "runs", "sleeps", "on", "grass"]))
    for split, n in (("train", 48), ("val", 6)):
        de = [" ".join(rng.choice(words, size=3 + i % 4)) for i in range(n)]
        (root / f"{split}.de").write_text("\n".join(de) + "\n")
        (root / f"{split}.en").write_text("\n".join(" ".join(english[w] for w in s.split()) for s in de) + "\n")


