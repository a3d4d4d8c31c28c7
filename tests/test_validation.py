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


@pytest.mark.parametrize("metric", ["bleu4", "cider"])
def test_val_metric_selects_best_stops_and_decays_on_its_score_and_both_are_logged(toy, tmp_path, monkeypatch,
                                                                                 metric):
    """Scripted scores (BLEU-4 best at epoch 5, CIDEr-D at epoch 2): best.pt, the learning rate's decay and early
    stopping (patience 2) follow --val-metric's; every epoch's row holds both scores."""
    import json

    scripted = {"bleu4": iter([5.0, 4.0, 6.0, 1.0, 7.0]), "cider": iter([1.0, 3.0, 2.0, 1.0, 0.0])}
    monkeypatch.setattr(task_module, "bleu4", lambda refs, hyps: next(scripted["bleu4"]))
    monkeypatch.setattr(task_module, "cider", lambda refs, hyps: next(scripted["cider"]))
    cfg = TrainConfig(data=(str(toy / "dataset_toy.json"),), images=str(toy / "images"),
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), min_count=1, batch_size=4,
                      epochs=5, lr=1e-2, lr_decay=0.5, patience=2, val_beam_size=1, val_max_len=6, progress=False,
                      device="cpu", seed=0, val_metric=metric)
    train(ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8), cfg)
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    # the lr after each epoch's decision: halved after an epoch without a new best; CIDEr-D stops after epoch 4
    best_epoch, lrs = {"bleu4": (5, [1e-2, 5e-3, 5e-3, 2.5e-3, 2.5e-3]),
                       "cider": (2, [1e-2, 1e-2, 5e-3, 2.5e-3])}[metric]
    assert [(r["val_bleu4"], r["val_cider"]) for r in rows] == [(5, 1), (4, 3), (6, 2), (1, 1), (7, 0)][:len(lrs)]
    assert [r["lr"] for r in rows] == pytest.approx(lrs)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == best_epoch


def test_validation_scores_are_those_of_its_captions(toy, tmp_path, monkeypatch):
    """The logged val_bleu4 and val_cider are coco-caption's BLEU-4 and CIDEr-D of that validation's captions."""
    import json

    from showattend.captioning.metrics import bleu4, cider

    seen = []
    real = task_module.evaluate_split
    monkeypatch.setattr(task_module, "evaluate_split",
                        lambda *a, **k: seen.append((a[2], real(*a, **k))) or seen[-1][1])
    cfg = TrainConfig(data=(str(toy / "dataset_toy.json"),), images=str(toy / "images"),
                      cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "run"), min_count=1, batch_size=4,
                      epochs=2, lr=1e-2, patience=9, val_beam_size=2, val_max_len=6, progress=False, device="cpu",
                      seed=0, val_metric="cider")
    train(ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8), cfg)
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == len(seen) == 2
    for row, (records, results) in zip(rows, seen):
        refs, hyps = {r.key: r.tokens for r in records}, {k: r.words for k, r in results.items()}
        assert row["val_bleu4"] == round(bleu4(refs, hyps), 2) and row["val_cider"] == round(cider(refs, hyps), 2)
