"""Self-critical sequence training: the sampler, the baselines, the estimator, the two passes agreeing, and a run
that raises its reward and resumes exactly."""
import json
import math
from collections import Counter

import pytest
import torch

from conftest import write_toy_images
from showattend.captioning.losses import scst_loss, self_critical_baseline
from showattend.cli import main
from showattend.search import sample_search
from test_search import BOS, EOS, TableModel


def sample_table(m, B=1, **kw):
    m.prefixes, m.codes, m.calls = [()], {(): 0}, 0
    return sample_search(m.step, (torch.zeros(B, dtype=torch.long),), (torch.arange(B),), BOS, EOS, **kw)


def test_greedy_sampling_is_greedy_search():
    m = TableModel(5, seed=3)
    tokens, lengths = sample_table(m, B=4, max_len=6, greedy=True)
    ref = TableModel(5, seed=3).run_greedy(B=4, max_len=7)  # one more step: greedy_search forces <end> at the last
    for b, h in enumerate(ref):
        drawn = tokens[b, :lengths[b]].tolist()
        assert drawn[:len(h.tokens)] == h.tokens[:6]
        assert all(t == EOS for t in tokens[b, lengths[b]:].tolist())  # padding after the end


def test_samples_follow_the_model_and_the_seed_fixes_them():
    # p(first) = (.1 <end>, .6 a, .3 b); after a: <end> surely; after b: (.5 <end>, .5 a)
    table = {(): [0.1, 0.6, 0.3], (1,): [1.0, 0.0, 0.0], (2,): [0.5, 0.5, 0.0], (2, 1): [1.0, 0.0, 0.0]}
    m = TableModel(3, table=table)
    n = 4000
    g = torch.Generator().manual_seed(0)
    tokens, lengths = sample_table(m, B=1, samples=n, max_len=4, generator=g)
    seqs = Counter(tuple(tokens[i, :lengths[i]].tolist()) for i in range(n))
    expect = {(EOS,): 0.1, (1, EOS): 0.6, (2, EOS): 0.15, (2, 1, EOS): 0.15}
    assert set(seqs) == set(expect)
    for s, p in expect.items():
        assert abs(seqs[s] / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    again, _ = sample_table(TableModel(3, table=table), samples=n, max_len=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens, again)


def test_when_the_host_checks_does_not_change_the_samples():
    """Samples that end early and late: checking for completion every step or only at the end gives the same."""
    runs = [sample_table(TableModel(5, seed=4, eos_prob=0.15), B=3, samples=8, max_len=12, sync_every=s,
                         generator=torch.Generator().manual_seed(5)) for s in (1, 4, 12)]
    lengths = runs[0][1]
    assert lengths.min() < 4 and lengths.max() > 8  # some end before the first check, some run long
    for tokens, n in runs[1:]:
        assert torch.equal(tokens[:, :runs[0][0].size(1)], runs[0][0]) and torch.equal(n, lengths)


def test_a_sample_without_end_is_cut_at_max_len():
    m = TableModel(4, seed=0, eos_prob=0.0)  # <end> never drawn
    tokens, lengths = sample_table(m, B=2, samples=3, max_len=5, generator=torch.Generator().manual_seed(1))
    assert tokens.shape == (6, 5) and lengths.tolist() == [5] * 6 and not (tokens == EOS).any()


def test_baselines_exact():
    r = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    assert self_critical_baseline(r, "mean").tolist() == [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]
    assert self_critical_baseline(r, "greedy", torch.tensor([0.5, 4.0])).tolist() == [[0.5] * 3, [4.0] * 3]
    with pytest.raises(ValueError, match="at least 2"):
        self_critical_baseline(r[:, :1], "mean")
    with pytest.raises(ValueError, match="unknown"):
        self_critical_baseline(r, "average")


def test_the_loss_is_per_sampled_token():
    """By default the surrogate is divided by the sampled tokens (mask.sum()), not by the sequences."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 6, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    r, b = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.2, 0.9, 1.0])
    loss, seq_lp = scst_loss(logits, targets, mask, r, b)
    lp = torch.log_softmax(logits, -1).gather(2, targets.unsqueeze(2)).squeeze(2)
    assert torch.allclose(seq_lp, (lp * mask).sum(1).detach())
    assert torch.allclose(loss, -((r - b) * (lp * mask).sum(1)).sum() / 7)


def test_the_estimator_is_unbiased():
    """A one-word policy p = softmax(θ) over 4 words with fixed rewards: the mean of the SCST gradient (mean-of-
    the-others baseline, k = 4 samples) over many draws equals the exact ∇ E_p[r] = Σ_w r_w ∇p_w."""
    theta = torch.tensor([0.3, -0.2, 0.5, 0.0], dtype=torch.float64)
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    t = theta.clone().requires_grad_(True)
    exact, = torch.autograd.grad((torch.softmax(t, 0) * rewards).sum(), t)
    g = torch.Generator().manual_seed(0)
    draws, k = 20000, 4
    words = torch.multinomial(torch.softmax(theta, 0).expand(draws, 4), k, replacement=True, generator=g)  # (D, k)
    t = theta.clone().requires_grad_(True)
    logits = t.expand(draws * k, 1, 4)
    r = rewards[words].view(draws, k)
    b = self_critical_baseline(r, "mean")
    mask = torch.ones(draws * k, 1, dtype=torch.bool)
    loss, _ = scst_loss(logits, words.view(-1, 1), mask, r.view(-1), b.view(-1), tokens=draws * k)
    estimate, = torch.autograd.grad(-loss, t)  # the loss is minimised: its negative gradient ascends E[r]
    assert torch.allclose(estimate, exact, atol=0.01), (estimate, exact)
    assert exact.abs().max() > 0.1


def test_teacher_forced_log_probs_are_the_sampling_distribution(tmp_path):
    """The second pass (the decoder's batched training pass on the samples) gives the log-probabilities the
    samples were drawn with: the sum of the sampler's per-step log p of each drawn token."""
    from showattend.captioning.captioner import Captioner
    from showattend.captioning.config import ModelConfig
    from showattend.captioning.network import build_decoder
    from showattend.captioning.vocab import Vocab

    torch.manual_seed(0)
    vocab = Vocab(list(Vocab.specials) + ["a", "b", "c", "d", "e"])
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    dec = build_decoder(cfg, len(vocab))
    cap = Captioner(dec, vocab, cfg, device="cpu")
    banned = torch.zeros(len(vocab), dtype=torch.bool)
    banned[[vocab.pad, vocab.start, vocab.unk]] = True
    ann = torch.randn(3, 6, 1280)
    drawn = []

    def step(tokens, state, context):
        lp, state, extra = cap._step(tokens, state, context, banned=banned, weights=dec.step_weights())
        drawn.append(lp)
        return lp, state, extra

    with torch.no_grad():
        keys = dec.attention.project_keys(ann)
        tokens, lengths = sample_search(step, dec.init_state(ann), (ann, keys), vocab.start, vocab.end, max_len=8,
                                        samples=4, generator=torch.Generator().manual_seed(2))
    # the step's log-probs with the banned tokens at -inf, renormalised: the distribution multinomial draws from
    step_lp = torch.log_softmax(torch.stack(drawn, 1), 2).gather(2, tokens.unsqueeze(2)).squeeze(2)  # (12, T)
    mask = torch.arange(tokens.size(1)) < lengths.unsqueeze(1)
    expect = step_lp.masked_fill(~mask, 0).sum(1)
    order = sorted(range(12), key=lambda i: -int(lengths[i]))
    caps = torch.cat([torch.full((12, 1), vocab.start), tokens], 1)[order]
    out = dec(ann.repeat_interleave(4, 0)[order], caps, [int(lengths[i]) + 1 for i in order])
    _, seq_lp = scst_loss(out.logits, caps[:, 1:], out.mask, torch.zeros(12), torch.zeros(12), banned)
    assert torch.allclose(seq_lp, expect[order], atol=1e-5)
    assert (lengths > 1).any()


@pytest.fixture(scope="module")
def toy_xe(tmp_path_factory):
    """A toy captioner trained briefly with cross-entropy, to start SCST from."""
    root = tmp_path_factory.mktemp("scst")
    data = write_toy_images(root / "toy", n=12, splits=(9, 11))
    common = ["--data", str(data / "dataset_toy.json"), "--images", str(data / "images"), "--cache-dir",
              str(root / "cache"), "--no-progress", "--device", "cpu", "--image-size", "64", "--val-beam-size", "1"]
    assert main(["train", *common, "--out-dir", str(root / "xe"), "--min-count", "1", "--batch-size", "4",
                 "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8", "--epochs", "12", "--patience", "12", "--lr-decay", "0.99",
                 "--lr", "1e-2"]) == 0
    return root, common


def test_scst_raises_the_reward_and_resumes_exactly(toy_xe):
    root, common = toy_xe
    init = ["--scst", "--init", str(root / "xe" / "last.pt"), "--lr", "3e-3", "--lr-decay", "0.99"]
    # every training image in each step, 8 samples each: the samples' mean CIDEr-D (x 100) goes up
    assert main(["train", *common, *init, "--batch-size", "9", "--scst-samples", "8", "--patience", "30",
                 "--epochs", "30", "--out-dir", str(root / "rl")]) == 0
    reward = [json.loads(x)["train_reward"] for x in open(root / "rl" / "metrics.jsonl")]
    assert len(reward) == 30 and sum(reward[-5:]) / 5 > sum(reward[:5]) / 5 + 15, reward
    saved = json.loads((root / "rl" / "config.json").read_text())
    assert saved["train"]["lr"] == 3e-3 and saved["train"]["scst"] and saved["model"]["embed_dim"] == 16
    # interrupted after 2 epochs, then resumed: the same weights as the run that went straight through 3 (with the
    # greedy baseline, and a BLEU-4 term in the reward)
    args = ["train", *common, *init, "--batch-size", "3", "--scst-baseline", "greedy", "--scst-bleu-weight", "0.5"]
    assert main(args + ["--out-dir", str(root / "a"), "--epochs", "3"]) == 0
    assert main(args + ["--out-dir", str(root / "b"), "--epochs", "2"]) == 0
    assert main(["train", "--out-dir", str(root / "b"), "--resume", "--epochs", "3"]) == 0
    a, b = (torch.load(root / x / "last.pt", weights_only=True)["model"] for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["L_o.weight"], torch.load(root / "xe" / "last.pt", weights_only=True)["model"]["L_o.weight"])


def test_scst_defaults_and_errors(toy_xe, capsys, tmp_path):
    from showattend.cli import parse

    root, common = toy_xe
    init = str(root / "xe" / "last.pt")
    t = parse(["train", *common, "--scst", "--init", init])[1]
    assert (t.train.lr, t.train.batch_size, t.model.embed_dim) == (5e-5, 16, 16)  # SCST defaults, the init's model
    assert t.train.val_metric == "cider"  # as for any run
    assert parse(["train", *common, "--scst", "--init", init, "--val-metric", "bleu4"])[1].train.val_metric == "bleu4"
    assert parse(["train", *common])[1].train.lr == 4e-4
    assert parse(["train", *common, "--scst", "--init", init, "--lr", "1e-3"])[1].train.lr == 1e-3  # given: kept
    (tmp_path / "scst.yaml").write_text(f"scst: true\ninit: {init}\n")  # the same from a file: the same run
    f = parse(["train", *common, "--config", str(tmp_path / "scst.yaml")])[1]
    assert (f.train.lr, f.train.batch_size, f.model.embed_dim, f.train.init) == (5e-5, 16, 16, init)
    (tmp_path / "bad.yaml").write_text(f"init: {init}\nembed_dim: 32\n")  # checked against the init's model
    with pytest.raises(ValueError, match="--embed-dim 32"):
        parse(["train", *common, "--config", str(tmp_path / "bad.yaml")])
    assert main(["train", *common, "--scst", "--out-dir", str(root / "x")]) != 0
    assert "--init" in capsys.readouterr().err
    assert main(["train", *common, "--scst", "--init", init, "--embed-dim", "32", "--out-dir", str(root / "y")]) != 0
    assert "--embed-dim 32" in capsys.readouterr().err
    assert main(["train", *common, "--scst", "--init", str(root / "nope.pt"), "--out-dir", str(root / "z")]) != 0
    assert "nope.pt" in capsys.readouterr().err
    assert main(["train", *common, "--scst", "--init", init, "--scst-samples", "1", "--out-dir", str(root / "w")]) != 0
    assert "--scst-samples" in capsys.readouterr().err
    assert main(["train", *common, "--scst", "--init", init, "--scst-bleu-weight", "-1", "--out-dir",
                 str(root / "v")]) != 0
    assert "--scst-bleu-weight must not be negative" in capsys.readouterr().err


def test_the_reward_adds_the_bleu_term():
    """--scst-bleu-weight w: each caption's reward is its CIDEr-D plus w times its sentence BLEU-4 (both checked
    against pycocoevalcap in test_cider.py); the brevity penalty lowers a caption cut short of every reference."""
    from types import SimpleNamespace

    from showattend.captioning.cider import CiderD
    from showattend.captioning.scst import SelfCritical

    refs = [[[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 7, 5, 6, 0]], [[8, 9, 10, 0]]]  # 0: <end>
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 0], [1, 2, 3, 4, 5, 0, 0], [8, 9, 10, 0, 0, 0, 0]])
    lengths, images = torch.tensor([7, 5, 4]), torch.tensor([0, 0, 1])  # the second: cut at the length limit
    rewards = {}
    for w in (0.0, 2.0):
        objective = object.__new__(SelfCritical)  # only what _reward reads
        objective.cfg, objective.cider = SimpleNamespace(scst_bleu_weight=w), CiderD(refs, 11)
        rewards[w] = objective._reward(tokens, lengths, images)
    cider, bleu = CiderD(refs, 11).scores(tokens, lengths, images, bleu=True)
    assert torch.equal(rewards[0.0], cider.float())
    assert torch.allclose(rewards[2.0], (cider + 2 * bleu).float())
    assert bleu[0] == pytest.approx(1.0) and bleu[2] == pytest.approx(1.0)  # copies of a reference
    # "1 2 3 4 5" (no <end>): every n-gram is in a reference, but it is 5 words against 7: BP = exp(1 - 7/5)
    assert bleu[1].item() == pytest.approx(math.exp(1 - 7 / 5), rel=1e-6)
    gain = rewards[2.0] - rewards[0.0]
    assert gain[1].item() == pytest.approx(gain[0].item() - 2 * (1 - math.exp(1 - 7 / 5)), rel=1e-5)  # cut: less


def test_the_reward_counts_end_as_a_word():
    """With --scst-reward-end (the default) the references end with <end>, and a sample is scored with the <end>
    it drew: stopping where the references stop is rewarded, stopping early is not."""
    from showattend.captioning.cider import CiderD
    from showattend.captioning.data import CaptionRecord
    from showattend.captioning.scst import _references
    from showattend.captioning.vocab import Vocab

    vocab = Vocab(list(Vocab.specials) + ["a", "dog", "runs", "cat", "sits"])
    recs = [CaptionRecord("1.jpg", "train", [["a", "dog", "runs"], ["a", "dog"]]),
            CaptionRecord("2.jpg", "train", [["a", "cat", "sits"]])]
    refs = _references(recs, vocab, end=True)
    a, dog, runs = (vocab.encode([w], False)[0] for w in ("a", "dog", "runs"))
    end = vocab.end
    assert refs[0] == [[a, dog, runs, end], [a, dog, end]] and _references(recs, vocab)[0][0] == [a, dog, runs]
    # "a dog runs <end>" scores above the same words cut at the length limit, before <end> was drawn
    full, cut = CiderD(refs, len(vocab)).score_lists([[a, dog, runs, end], [a, dog, runs]], [0, 0]).tolist()
    assert full > cut > 0


def test_the_cross_entropy_term_trains_on_the_references(toy_xe):
    """--scst-xe-weight adds the cross-entropy of the batch images' reference captions: with a large weight it
    dominates, and the references' cross-entropy falls epoch by epoch."""
    root, common = toy_xe
    assert main(["train", *common, "--scst", "--init", str(root / "xe" / "last.pt"), "--lr", "3e-3", "--lr-decay",
                 "0.99", "--batch-size", "3", "--scst-xe-weight", "20", "--epochs", "4", "--patience", "9",
                 "--out-dir", str(root / "mixed")]) == 0
    ce = [json.loads(x)["train_ce"] for x in open(root / "mixed" / "metrics.jsonl")]
    assert all(a > b for a, b in zip(ce, ce[1:])), ce


def test_scst_keeps_the_model_it_starts_from_until_an_epoch_beats_it(toy_xe, capsys):
    """The --init model's validation score is the best to beat: an SCST run whose every epoch is worse (a huge
    learning rate wrecks the model) ends with the init's weights in best.pt, its score as the best, and every
    epoch counted as bad (so early stopping ends the run after --patience epochs)."""
    root, common = toy_xe
    init = root / "xe" / "last.pt"
    assert main(["train", *common, "--scst", "--init", str(init), "--lr", "5", "--batch-size", "9",
                 "--epochs", "3", "--patience", "2", "--out-dir", str(root / "worse")]) == 0
    start = float(capsys.readouterr().err.split("the starting model's validation val_cider: ")[1].split()[0])
    rows = [json.loads(x) for x in open(root / "worse" / "metrics.jsonl")]
    assert start > 0 and len(rows) == 2 and all(r["val_cider"] < start for r in rows), (start, rows)
    best, last = (torch.load(root / "worse" / f, weights_only=True) for f in ("best.pt", "last.pt"))
    xe = torch.load(init, weights_only=True)["model"]
    assert all(torch.equal(best["model"][k], xe[k].to(best["model"][k].dtype)) for k in xe)
    assert last["best_score"] == pytest.approx(start, abs=0.005) and last["bad_epochs"] == 2
    assert not torch.equal(last["model"]["L_o.weight"], xe["L_o.weight"])


def test_scst_validation_is_coco_captions_cider_on_words(tmp_path, monkeypatch):
    """val_cider is pycocoevalcap's CIDEr-D of the words: a reference word rarer than --min-count counts as
    itself (not <unk>) and a reference longer than --max-caption-len is not cut (the id-based score did both)."""
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    from showattend.captioning import scst as scst_module
    from showattend.captioning import task as task_module
    from showattend.captioning.cache import FeatureStore
    from showattend.captioning.data import CaptionRecord
    from showattend.captioning.captioner import CaptionResult
    from showattend.captioning.config import ModelConfig
    from showattend.captioning.task import CaptionTask
    from showattend.captioning.train import TrainConfig
    from showattend.captioning.vocab import Vocab

    folder = tmp_path / "cache"
    folder.mkdir()
    keys = [f"{i}.jpg" for i in range(4)]
    np.save(folder / "features.npy", np.zeros((4, 4, 1280), np.float16))
    (folder / "index.json").write_text(json.dumps({"encoder": "efficientnet_lite0", "image_size": 224,
                                                   "keys": keys, "L": 4, "D": 1280}))
    long = ["a", "dog"] + ["and", "a", "cat"] * 5  # 17 words
    records = [CaptionRecord("0.jpg", "train", [["a", "dog"], ["a", "cat"]]),
               CaptionRecord("1.jpg", "train", [long]),  # only over-long references: the reward keeps them
               CaptionRecord("2.jpg", "val", [["a", "zebu", "grazes"], ["a", "dog", "runs"], long]),
               CaptionRecord("3.jpg", "val", [["a", "cat", "sits"], ["a", "cat"]])]
    vocab = Vocab.build([t for r in records[:2] for t in r.tokens], 1)  # no "zebu", "grazes", "sits"
    assert "runs" not in vocab.itos
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), scst=True, init="x", max_caption_len=10, progress=False,
                      device="cpu", val_metric="cider")
    task = CaptionTask(ModelConfig(embed_dim=8, hidden_dim=8, attention_dim=4), cfg, records[:2], records[2:],
                       FeatureStore(str(folder)), vocab, torch.device("cpu"), objective=scst_module.SelfCritical)
    assert task.score_key == "val_cider"
    hyps = {"2.jpg": ["a", "zebu", "grazes"], "3.jpg": long}
    monkeypatch.setattr(task_module, "evaluate_split", lambda *a, **k: {
        key: CaptionResult(words, 0.0, torch.zeros(0), torch.zeros(0), (2, 2)) for key, words in hyps.items()})
    gts = {r.key: [" ".join(t) for t in r.tokens] for r in records[2:]}
    expected = 100 * Cider().compute_score(gts, {k: [" ".join(v)] for k, v in hyps.items()})[0]
    assert task.validate()["val_cider"] == pytest.approx(expected, rel=1e-9)


def test_an_init_run_killed_in_its_first_epoch_resumes(toy_xe):
    """The start's validation writes best.pt, and last.pt with it: a run killed before its first epoch ended
    resumes (a folder with best.pt and no last.pt cannot)."""
    import os
    import subprocess
    import sys

    root, common = toy_xe
    args = [sys.executable, "-m", "showattend", "train", *common, "--scst", "--init", str(root / "xe" / "last.pt"),
            "--batch-size", "3", "--epochs", "1", "--out-dir", str(root / "killed")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOWATTEND_KILL_AT_STEP": "1"}
    assert subprocess.run(args, env=env, capture_output=True).returncode == -9
    assert (root / "killed" / "best.pt").exists() and (root / "killed" / "last.pt").exists()
    assert main(["train", *common, "--out-dir", str(root / "killed"), "--resume"]) == 0
    assert [json.loads(x)["epoch"] for x in open(root / "killed" / "metrics.jsonl")] == [1]


def test_a_samples_draws_follow_its_place_in_the_global_batch_not_its_process():
    """The engine's sharding splits a global batch of 5 images over 2 processes; each process samples its share
    with rows = global position·k + j: together they draw exactly the sequences one process draws for all 5
    (with the old per-process seeding, images at the same local position shared their draws)."""
    from showattend.engine.distributed import shard

    k, B = 3, 5
    whole, _ = sample_table(TableModel(6, seed=2, eos_prob=0.2), B=B, samples=k, max_len=8,
                            generator=torch.Generator().manual_seed(7))
    parts = []
    for rank in range(2):
        positions = torch.tensor([p for _, p in shard(list(range(B)), rank, 2)])
        rows = (positions * k).repeat_interleave(k) + torch.arange(k).repeat(len(positions))
        m = TableModel(6, seed=2, eos_prob=0.2)
        m.prefixes, m.codes, m.calls = [()], {(): 0}, 0
        tokens, _ = sample_search(m.step, (torch.zeros(len(positions), dtype=torch.long),), (positions,), BOS, EOS,
                                  max_len=8, samples=k, generator=torch.Generator().manual_seed(7), rows=rows,
                                  total_rows=B * k)
        parts.append(tokens)
    T = max(p.size(1) for p in parts + [whole])
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.size(1)), value=EOS)  # noqa: E731
    assert torch.equal(torch.cat([pad(p) for p in parts]), pad(whole))
