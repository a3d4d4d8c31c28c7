"""Host reads: every path that runs many times reads back from the device only what
:mod:`showattend.engine.reads` allows it, by name: the training steps of both applications, the SCST step,
beam search, greedy search, sampling, captioning's and translation's decoding, and the CIDEr-D reward. Both
counters of ``tests/counters.py`` run; on a GPU the CUDA cases also count the synchronisations CUDA reports."""
import numpy as np
import pytest
import torch

from showattend import search
from showattend.captioning import captioner as captioning_model
from showattend.captioning.cider import CiderD
from showattend.captioning.scst import SelfCritical
from showattend.engine import DistInfo, StepContext, Trainer

from counters import HostReads, SyncCounter, DispatchReads, search_checks, PKG
from toys import DEVICES, toy_caption_task, toy_translation_task


def test_the_dispatch_counter_sees_reads_inside_torch_functions():
    t = torch.tensor([1.0, -1.0, 2.0])
    with DispatchReads() as c:
        torch.nonzero(t)  # a function form
        t[t > 0]  # boolean-mask indexing
        float(t.sum())  # item
        torch.unique(t)
    assert c.ops["aten.nonzero.default"] == 1 and c.ops["aten._local_scalar_dense.default"] == 1
    assert sum(n for op, n in c.ops.items() if op.startswith("aten.index")) == 1
    assert sum(n for op, n in c.ops.items() if "unique" in op) == 1


def test_the_counter_sees_syncs_in_showattend_code_only():
    # a function compiled as if it were a showattend file: its syncs are counted
    code = compile("def f(t):\n    return t.tolist(), t[t > 0], float(t[0]), t.cpu().numpy()\n",
                   f"{PKG}/probe.py", "exec")
    scope = {}
    exec(code, scope)
    with SyncCounter() as c:
        scope["f"](torch.tensor([1.0, -1.0]))
        torch.tensor([1.0, 2.0]).sum().item()  # the test's own call
    assert [x.split(" ")[0] for x in c.calls] == ["tolist", "__getitem__", "__float__", "cpu", "numpy"]


def test_a_read_off_the_list_is_reported():
    with HostReads() as reads:
        torch.tensor([1.0, 2.0]).nonzero()  # not from showattend: the dispatcher sees it all the same
    assert reads.unlisted("captioning.cider", 1) == {"aten.nonzero.default": (1, 0)}
    assert reads.unlisted("search", 1, 0) == {"aten.nonzero.default": (1, 0), "Tensor.cpu": (0, 1),
                                              "Tensor.numpy": (0, 1)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("app", ["soft", "hard", "translation"])
def test_the_training_step_reads_nothing_back_from_the_device(tmp_path, app, precision, device):
    if app == "translation":
        task, cfg = toy_translation_task(tmp_path, device)
    else:  # a hard model always samples here (expected_context_prob 0), with 2 samples per caption
        task, cfg = toy_caption_task(tmp_path, app, device=device, expected_context_prob=0.0, hard_samples=2)
    cfg.precision = precision
    trainer = Trainer(task, cfg, DistInfo(), torch.device(device))
    batches = task.epoch_batches(1)[:4]
    trainer.sampler.batches = [[(i, p) for p, i in enumerate(b)] for b in batches]
    loaded = list(trainer.loader)
    before = [p.detach().clone() for p in task.model.parameters()]
    with HostReads(device) as reads:
        for k, (b, batch) in enumerate(zip(batches, loaded)):
            trainer.step(batch, StepContext(k, sum(task.words(i) for i in b), len(b), 1))
    path = "translation.train_step" if app == "translation" else "captioning.train_step"
    assert reads.unlisted(path, len(batches)) == {}, reads.methods.calls  # every read is on the path's list
    assert trainer.interval_steps == 4 and any(not torch.equal(a, p) for a, p in zip(before, task.model.parameters()))
    if app == "hard":
        assert task.objective.baseline.steps == 4
    summary = trainer._flush()  # the log point reads the sums once
    assert all(np.isfinite(v) for v in summary.values()) and trainer.interval == {}


class StepCount:
    """Wraps a search function: counts the step calls of each search it runs, and the loop checks they made."""

    def __init__(self, fn, forced_end=True):
        self.fn, self.forced_end, self.checks, self.searches = fn, forced_end, 0, 0

    def __call__(self, step, *args, **kwargs):
        steps = [0]

        def counted(*a, **k):
            steps[0] += 1
            return step(*a, **k)

        out = self.fn(counted, *args, **kwargs)
        max_len = kwargs.get("max_len", args[4] if len(args) > 4 else None)
        self.checks += search_checks(steps[0], max_len, forced_end=self.forced_end)
        self.searches += 1
        return out


def _table_step(V=7, eos=1, seed=0):
    """A step function over a random table: log p(next | previous token), no state beyond a counter."""
    g = torch.Generator().manual_seed(seed)
    table = torch.log_softmax(torch.randn(V, V, generator=g) * 2, dim=-1)

    def step(tokens, state, context):
        return table.to(tokens.device)[tokens], state, None
    return step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["beam", "greedy", "sample"])
@pytest.mark.parametrize("B", [1, 6])
def test_searches_read_only_their_loop_checks_and_one_transfer(kind, B, device):
    step, state = _table_step(), (torch.zeros(B, 1, device=device),)
    fn = {"beam": search.beam_search, "greedy": search.greedy_search, "sample": search.sample_search}[kind]
    counted = StepCount(fn, forced_end=kind == "beam")
    kwargs = {"beam": dict(beam_size=3), "greedy": {}, "sample": dict(samples=2)}[kind]
    with HostReads(device) as reads:
        counted(step, state, (), 0, 1, max_len=10, **kwargs)
    assert reads.unlisted("search.sample" if kind == "sample" else "search", 1, counted.checks) == {}, \
        reads.methods.calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("how", ["beam", "greedy", "hard"])
def test_captioning_decode_reads_its_checks_the_word_table_and_one_transfer(tmp_path, monkeypatch, how, device):
    task, _ = toy_caption_task(tmp_path, device=device)
    cap = task.captioner
    beam, greedy = StepCount(search.beam_search), StepCount(search.greedy_search, forced_end=False)
    monkeypatch.setattr(captioning_model, "beam_search", beam)
    monkeypatch.setattr(captioning_model, "greedy_search", greedy)
    annotations = torch.randn(5, 4, 1280, device=device)
    options = {"beam": dict(beam_size=3), "greedy": dict(beam_size=1),
               "hard": dict(beam_size=3, attention="hard", samples=2)}[how]
    cap.decode(annotations, max_len=10, **options)  # the first search builds the word table; later ones check it
    beam.searches = greedy.searches = beam.checks = greedy.checks = 0
    with HostReads(device) as reads:
        results = cap.decode(annotations, max_len=10, **options)
    searches = beam.searches + greedy.searches
    assert searches == (2 if how == "hard" else 1) and len(results) == 5
    assert reads.unlisted("captioning.decode", searches, beam.checks + greedy.checks) == {}, reads.methods.calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_the_scst_step_reads_its_sample_lengths_and_loop_checks(tmp_path, monkeypatch, baseline, device):
    task, cfg = toy_caption_task(tmp_path, device=device, objective=SelfCritical, scst=True, scst_samples=3,
                                 scst_baseline=baseline, scst_xe_weight=0.5, val_max_len=10)
    sampler = StepCount(search.sample_search, forced_end=False)
    monkeypatch.setattr(captioning_model, "sample_search", sampler)
    trainer = Trainer(task, cfg, DistInfo(), torch.device(device))
    batches = task.epoch_batches(1)[:2]
    trainer.sampler.batches = [[(i, p) for p, i in enumerate(b)] for b in batches]
    loaded = list(trainer.loader)
    with HostReads(device) as reads:
        for k, (b, batch) in enumerate(zip(batches, loaded)):
            trainer.step(batch, StepContext(k, sum(task.words(i) for i in b), len(b), 1))
    assert sampler.searches == len(batches) * (2 if baseline == "greedy" else 1)
    assert reads.unlisted("captioning.scst_step", len(batches), sampler.checks) == {}, reads.methods.calls


@pytest.mark.parametrize("device", DEVICES)
def test_the_cider_reward_reads_nothing(device):
    refs = [[[1, 2, 3, 4], [1, 2, 5]], [[6, 6, 6]], [[2, 3], [4, 5, 6, 7, 8], [1]]]
    cider = CiderD(refs, 10, device=device)
    tokens = torch.tensor([[1, 2, 3, 9, 9], [6, 6, 0, 0, 0], [4, 5, 6, 7, 8], [0, 0, 0, 0, 0]], device=device)
    lengths, images = torch.tensor([3, 2, 5, 0], device=device), torch.tensor([0, 1, 2, 2], device=device)
    with HostReads(device) as reads:
        scores = cider(tokens, lengths, images)
    assert reads.unlisted("captioning.cider", 1) == {}, reads.methods.calls
    assert torch.equal(scores.cpu(), cider.score_lists([[1, 2, 3], [6, 6], [4, 5, 6, 7, 8], []], [0, 1, 2, 2]).cpu())


def test_cider_of_a_corpus_of_empty_references_is_zero():
    cider = CiderD([[[]], [[]]], 5)
    assert cider.score_lists([[1, 2], []], [0, 1]).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beam_size", [1, 4])
def test_translation_decoding_reads_its_packing_checks_and_one_transfer(tmp_path, monkeypatch, beam_size, device):
    from showattend.translation import network as translation_model

    task, _ = toy_translation_task(tmp_path, device)
    beam, greedy = StepCount(search.beam_search), StepCount(search.greedy_search, forced_end=False)
    monkeypatch.setattr(translation_model, "beam_search", beam)
    monkeypatch.setattr(translation_model, "greedy_search", greedy)
    src = torch.tensor([[4, 5, 6, 7, 8], [5, 6, 7, 0, 0], [9, 4, 0, 0, 0]], device=device)
    with HostReads(device) as reads:
        hyps = task.model.translate_ids(src, [5, 3, 2], beam_size, 10)  # Translator.translate's lengths: a list
    assert len(hyps) == 3 and beam.searches + greedy.searches == 1
    assert reads.unlisted("translation.decode", 1, beam.checks + greedy.checks) == {}, reads.methods.calls
