"""Settings that depend on the GPU, proved on a CPU with torch.cuda's answers monkeypatched: the precision that
``--precision auto`` resolves to, the RNG state a resume restores when another number of GPUs is visible, and
which models DDP must broadcast buffers for."""
import pytest
import torch

from showattend.captioning.encoders import Encoder
from showattend.captioning.network import FineTuned
from showattend.captioning.network import Decoder
from showattend.engine import resolve_precision
from showattend.engine.state import rng_state, set_rng_state
from showattend.engine.distributed import buffers_trained

CUDA = torch.device("cuda", 0)


def _gpu(monkeypatch, native: bool, emulated: bool = True):
    """A CUDA device whose bf16 is native (Ampere and later), emulated only (V100, T4), or absent."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: native or (including_emulation and emulated))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100" if not native else "A100")


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_chooses_bf16_only_where_it_is_native(monkeypatch, caplog, native):
    from showattend.engine import config

    monkeypatch.setattr(config, "_WARNED", set())  # the warning is once per process
    _gpu(monkeypatch, native)
    assert resolve_precision("auto", CUDA) == (torch.bfloat16 if native else None)
    assert resolve_precision("fp32", CUDA) is None
    assert resolve_precision("bf16", CUDA) == torch.bfloat16  # asked for: given, emulated or not
    assert ("only emulates bfloat16" in caplog.text) == (not native)
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_bf16_is_refused_on_a_gpu_without_it(monkeypatch):
    _gpu(monkeypatch, native=False, emulated=False)
    assert resolve_precision("auto", CUDA) is None
    with pytest.raises(ValueError, match="Tesla V100 does not support bfloat16"):
        resolve_precision("bf16", CUDA)


class _FakeCuda:
    """torch.cuda's RNG calls on a machine with ``visible`` GPUs, this process on ``current``."""

    def __init__(self, monkeypatch, visible: int, current: int):
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}
        self.visible, self.current = visible, current
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.current].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", self._set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [self.states[i].clone() for i in range(self.visible)])

        def set_all(states):  # what the old code called: an IndexError with fewer GPUs visible
            for i, s in enumerate(states):
                if i >= self.visible:
                    raise IndexError("list index out of range")
                self.states[i] = s

        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)

    def _set(self, state, device="cuda"):
        self.states[self.current] = state.clone()


def test_a_resume_with_fewer_gpus_visible_restores_this_devices_rng_state(monkeypatch):
    """Saved on GPU 3 of 8 (a DDP process saves its own device's state), restored on GPU 0 of 1."""
    with monkeypatch.context() as m:
        _FakeCuda(m, visible=8, current=3)
        saved = rng_state()
    assert torch.equal(saved["cuda"], torch.full((16,), 3, dtype=torch.uint8))  # one device's state, not 8
    with monkeypatch.context() as m:
        fake = _FakeCuda(m, visible=1, current=0)
        set_rng_state(saved)
        assert torch.equal(fake.states[0], torch.full((16,), 3, dtype=torch.uint8))


def test_a_checkpoint_holding_every_gpus_state_still_resumes(monkeypatch):
    """Older last.pt files hold every visible device's state: this device's is taken, or none if it is gone."""
    with monkeypatch.context() as m:
        old = {**rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(4)]}
        fake = _FakeCuda(m, visible=2, current=1)
        set_rng_state(old)
        assert torch.equal(fake.states[1], torch.full((16,), 1, dtype=torch.uint8))
        fake.current, before = 1, fake.states[1].clone()
        set_rng_state({**old, "cuda": old["cuda"][:1]})  # saved with 1 GPU, resumed on device 1: left alone
        assert torch.equal(fake.states[1], before)


def test_ddp_broadcasts_buffers_only_where_training_changes_them():
    """A captioner's modules keep every batch norm in eval mode (the frozen encoder, and the fine-tuned top
    blocks, which keep their ImageNet statistics), so their buffers never change in a step; a module with a
    batch norm in training mode does need them sent."""
    decoder = Decoder(12, 1280, embed_dim=8, hidden_dim=8, attention_dim=4)
    assert not buffers_trained(decoder)
    assert not buffers_trained(FineTuned(decoder, Encoder(fine_tune_blocks=2)))
    assert not buffers_trained(FineTuned(decoder, Encoder(), from_images=True))
    trained = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert buffers_trained(trained) and not trained.training  # asked without changing the mode


def test_a_mid_epoch_resume_needs_the_training_set_it_was_saved_with():
    """A last.pt saved inside an epoch records the training set's size: another size (other data, or captions
    that another version dropped or kept) would give that epoch other batches, so it is refused; at an epoch's end
    it is not, and a checkpoint without the record is not."""
    from dataclasses import asdict

    from showattend.engine import EngineConfig, SettingsError, check_resume_settings

    cfg = EngineConfig()
    ckpt = {"train_config": asdict(cfg), "engine": {"pos": 3, "epoch": 2, "items": 100}}
    assert check_resume_settings(ckpt, cfg, items=100) == {}
    with pytest.raises(SettingsError, match="training set of 100 items; it now has 99"):
        check_resume_settings(ckpt, cfg, items=99)
    assert check_resume_settings({**ckpt, "engine": {"pos": 0, "epoch": 3, "items": 100}}, cfg, items=99) == {}
    assert check_resume_settings({**ckpt, "engine": {"pos": 3, "epoch": 2}}, cfg, items=99) == {}
    changed = check_resume_settings(ckpt, EngineConfig(lr=0.1, batch_size=64), items=100)
    assert changed == {"lr": (cfg.lr, 0.1)}
    with pytest.raises(SettingsError, match="--batch-size"):
        check_resume_settings(ckpt, EngineConfig(batch_size=32), items=100)


def test_a_short_batch_is_skipped_without_moving_the_positions_of_the_others():
    """Translation's bucketing can put a batch smaller than the world size mid-epoch. Two processes skip it, one
    trains it; either way position p is the same batch, so a run saved at a position under one world size
    resumes there under another, training the same items (the skip is the only difference)."""
    from showattend.engine.distributed import runnable_batches, shard

    batches = [[0, 1, 2, 3], [4], [5, 6, 7], [8, 9]]
    two, skipped = runnable_batches(batches, 0, 2)
    assert [i for i, _ in two] == [0, 2, 3] and skipped == [(1, [4])]
    one, none = runnable_batches(batches, 0, 1)
    assert [i for i, _ in one] == [0, 1, 2, 3] and none == []
    # saved after position 1 by one process (pos 2), resumed by two: the items not yet trained, nothing twice
    resumed, _ = runnable_batches(batches, 2, 2)
    assert [b for _, b in resumed] == [[5, 6, 7], [8, 9]]
    # and every item of a trained batch reaches exactly one process
    for _, b in two:
        assert sorted(i for r in range(2) for i, _ in shard(b, r, 2)) == sorted(b)


def test_the_number_of_loader_workers_follows_the_device(monkeypatch):
    """-1 (the default): none on a CPU; on CUDA the cores of this process's share less one, 1 to 8."""
    import os

    from showattend.engine.config import resolve_num_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    assert resolve_num_workers(-1, torch.device("cpu")) == 0
    assert resolve_num_workers(-1, CUDA) == 8 and resolve_num_workers(-1, CUDA, local_processes=8) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert resolve_num_workers(-1, CUDA) == 1 and resolve_num_workers(-1, CUDA, local_processes=8) == 1
    assert resolve_num_workers(3, CUDA) == 3 and resolve_num_workers(0, CUDA) == 0
