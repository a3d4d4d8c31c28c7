"""Validation sees today's weights: a real training run (the engine and its fused Adam, one process, three epochs)
decodes at every epoch's end exactly what a captioner loaded fresh from that epoch's weights decodes.

Until the word table's cache compared values, validation after the first epoch decoded with the first
validation's (V, 4n) word table: the fused optimizer writes parameters in place without bumping their version
counters, which the cache trusted. Captions are compared, not BLEU (a toy model's BLEU can be 0 at every epoch)."""
import copy

import pytest
import torch

from conftest import write_toy_images
from showattend.captioning import task as task_module
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import ModelConfig
from showattend.captioning.train import TrainConfig, train
from showattend.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_images(tmp_path_factory.mktemp("validation"), n=12, splits=(8, 12), size=48)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_every_validation_decodes_with_the_weights_of_its_epoch(toy, tmp_path, monkeypatch, beam_size):
    seen = []  # per validation: (a copy of the captioner's checkpoint payload, the store, records, results)
    real = task_module.evaluate_split

    def spy(captioner, store, records, *args, **kwargs):
        results = real(captioner, store, records, *args, **kwargs)
        seen.append((copy.deepcopy(captioner.state()), store, records, results))
        return results

    monkeypatch.setattr(task_module, "evaluate_split", spy)
    model_cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    cfg = TrainConfig(data=(str(toy / "dataset_toy.json"),), images=str(toy / "images"),
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), min_count=1, batch_size=4,
                      epochs=3, lr=1e-2, patience=9, val_beam_size=beam_size, val_max_len=6, progress=False,
                      device="cpu", seed=0)
    train(model_cfg, cfg)
    assert len(seen) == 3  # one validation per epoch, all in this process
    for epoch, (payload, store, records, results) in enumerate(seen, 1):
        path = tmp_path / f"epoch{epoch}.pt"
        save_checkpoint(str(path), payload)
        fresh = Captioner.from_checkpoint(str(path), "cpu")
        again = real(fresh, store, records, beam_size, cfg.val_max_len)
        assert list(again) == list(results)
        for key in results:
            assert again[key].words == results[key].words, f"epoch {epoch}, image {key}"
            assert again[key].log_prob == pytest.approx(results[key].log_prob, abs=1e-5), f"epoch {epoch}, {key}"
    # the weights did move between validations (else the comparison would prove nothing)
    first, last = seen[0][0]["model"], seen[-1][0]["model"]
    assert not torch.equal(first["embedding.weight"], last["embedding.weight"])
