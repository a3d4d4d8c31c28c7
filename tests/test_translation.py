"""The translator: a thin application of the shared attention core and the shared beam search."""
import gzip
import itertools
import json
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

import showattend.search
import showattend.translation.network as tm
from conftest import shared_path
from showattend.cli import main
from showattend.translation.data import pad_batch, read_parallel
from showattend.translation.config import DataConfig, TranslationTrainConfig, TranslatorConfig
from showattend.translation.evaluate import evaluate as evaluate_translator
from showattend.translation.network import Seq2Seq
from showattend.translation.train import train as train_translator
from showattend.translation.translator import Translator
from showattend.translation.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SubwordTokenizer

LEXICON = {"ein": "a", "der": "the", "mann": "man", "hund": "dog", "frau": "woman", "läuft": "runs",
           "schläft": "sleeps", "isst": "eats", "rot": "red", "klein": "small"}
VARIANTS = [("bahdanau", "concat"), ("luong", "dot"), ("luong", "general"), ("luong", "concat")]


def toy_pairs(n, seed=0):
    rng = random.Random(seed)
    subj, adj, verb = ["mann", "hund", "frau"], ["rot", "klein"], ["läuft", "schläft", "isst"]
    pairs = []
    for _ in range(n):
        words = [rng.choice(["ein", "der"])] + ([rng.choice(adj)] if rng.random() < 0.5 else []) + \
            [rng.choice(subj), rng.choice(verb)]
        pairs.append((" ".join(words), " ".join(LEXICON[w] for w in words)))
    return pairs


def tiny_cfg(decoder="luong", score="general", **kw):
    return TranslatorConfig(decoder=decoder, score=score, embed_dim=16, encoder_hidden=16, decoder_hidden=32,
                            attention_dim=16, dropout=0.0, src_vocab_size=30, tgt_vocab_size=20, **kw)


@pytest.mark.parametrize("decoder,score", VARIANTS)
def test_padding_gets_zero_weight_and_changes_nothing(decoder, score):
    torch.manual_seed(0)
    model = Seq2Seq(tiny_cfg(decoder, score)).eval()
    src, lengths = pad_batch([[5, 6, 7, 8, 9], [5, 6], [10, 11, 12]])
    tgt, _ = pad_batch([[4, 5, 6]] * 3, bos=True)
    logits, alphas = model(src, lengths, tgt)
    assert logits.shape == (3, 4, 20) and alphas.shape == (3, 4, 5)
    mask = torch.arange(5)[None, :] < lengths[:, None]  # (B, S)
    assert (alphas.masked_select(~mask[:, None, :].expand_as(alphas)) == 0).all()
    assert torch.allclose(alphas.sum(-1), torch.ones(3, 4), atol=1e-5)
    # padding does not change a sentence's output: alone or padded in a batch, the same logits
    alone, _ = model(src[1:2, :2], lengths[1:2], tgt[1:2])
    assert torch.allclose(alone, logits[1:2], atol=1e-5)


def _reference_decoder(model, src, lengths, tgt_in):
    """The decoders written out from the papers' equations with the model's own weights, step by step.

    Bahdanau et al. 2015 (appendix A.2.2): e_tj = v^T tanh(W s_{t-1} + U h_j), α = softmax over real tokens,
    c_t = Σ_j α_tj h_j, s_t = LSTM([E y_{t-1}; c_t], s_{t-1}), t_t = tanh(W_o [s_t; c_t; E y_{t-1}]), logits = W_y t_t.
    Luong et al. 2015 (§3.1, §3.3): h_t = LSTM([E y_{t-1}; h̃_{t-1}], h_{t-1}) with h̃_0 = 0 (input feeding),
    e_tj = h_t^T W_a h̄_j ("general") or v^T tanh(W [h_t] + U h̄_j) ("concat"), c_t = Σ_j α_tj h̄_j,
    h̃_t = tanh(W_c [c_t; h_t]), logits = W_s h̃_t.
    """
    dec = model.decoder
    memory, mask, final = model.encoder(src, lengths)  # (B, S, M)
    att = dec.attention

    def weights(query):
        if att.score == "additive":
            e = (torch.tanh(att.W(query).unsqueeze(1) + memory @ att.U.weight.T + att.U.bias) @ att.v.weight.T)
            e = e.squeeze(-1)
        elif att.score == "general":
            e = torch.einsum("bq,qk,bsk->bs", query, att.W.weight, memory)
        else:
            e = torch.einsum("bq,bsq->bs", query, memory)
        return torch.softmax(e.masked_fill(~mask, float("-inf")), -1)  # (B, S)

    h = torch.tanh(dec.init(final))
    cell, h_tilde = torch.zeros_like(h), torch.zeros_like(h)
    logits, alphas = [], []
    for t in range(tgt_in.size(1)):
        e = dec.embedding(tgt_in[:, t])
        if isinstance(dec, tm.BahdanauDecoder):
            alpha = weights(h)  # query s_{t-1}
            c = torch.einsum("bs,bsm->bm", alpha, memory)
            h, cell = dec.rnn(torch.cat([e, c], -1), (h, cell))
            logits.append(dec.out(torch.tanh(dec.readout(torch.cat([h, c, e], -1)))))
        else:
            h, cell = dec.rnn(torch.cat([e, h_tilde], -1), (h, cell))  # input feeding
            alpha = weights(h)  # query h_t
            c = torch.einsum("bs,bsm->bm", alpha, memory)
            h_tilde = torch.tanh(dec.W_c(torch.cat([c, h], -1)))
            logits.append(dec.W_s(h_tilde))
        alphas.append(alpha)
    return torch.stack(logits, 1), torch.stack(alphas, 1)


@pytest.mark.parametrize("decoder,score", VARIANTS)
def test_decoders_follow_the_papers_equations(decoder, score):
    """Each decoder on the shared attention core equals the paper's equations (Luong: with input feeding)."""
    torch.manual_seed(0)
    model = Seq2Seq(tiny_cfg(decoder, score)).eval()
    src, lengths = pad_batch([[5, 6, 7, 8, 9], [5, 6], [10, 11, 12]])
    tgt, _ = pad_batch([[4, 5, 6, 7], [8, 9, 4, 5], [6, 4, 4, 9]], bos=True)
    with torch.no_grad():
        logits, alphas = model(src, lengths, tgt)
        ref_logits, ref_alphas = _reference_decoder(model, src, lengths, tgt)
    assert torch.allclose(alphas, ref_alphas, atol=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-5)


def test_bahdanau_and_luong_differ_where_the_paper_says():
    """Bahdanau attends with s_{t-1} before the RNN step; Luong attends with the new h_t after it."""
    torch.manual_seed(0)
    for decoder, expected_first in (("bahdanau", "attention"), ("luong", "rnn")):
        model = Seq2Seq(tiny_cfg(decoder, "concat")).eval()
        order = []
        model.decoder.attention.register_forward_hook(lambda *a: order.append("attention"))
        model.decoder.rnn.register_forward_hook(lambda *a: order.append("rnn"))
        src, lengths = pad_batch([[5, 6, 7]])
        model(src, lengths, torch.tensor([[BOS_ID]]))
        assert order[0] == expected_first


def test_dot_score_needs_matching_sizes():
    with pytest.raises(ValueError, match="dot"):
        Seq2Seq(TranslatorConfig(decoder="luong", score="dot", encoder_hidden=16, decoder_hidden=16))
    with pytest.raises(ValueError):
        TranslatorConfig(decoder="transformer")


@pytest.mark.parametrize("decoder", ["bahdanau", "luong"])
def test_wide_beam_equals_brute_force_on_the_model(decoder):
    torch.manual_seed(1)
    V, max_len = 6, 3  # ids 0..5: pad and bos never generated, so </s> and 3 subwords
    model = Seq2Seq(TranslatorConfig(decoder=decoder, score="concat", embed_dim=8, encoder_hidden=8,
                                        decoder_hidden=16, attention_dim=8, dropout=0.0, src_vocab_size=12,
                                        tgt_vocab_size=V)).eval()
    src, lengths = pad_batch([[4, 7, 9, 5]])

    def log_prob(words, end):
        tgt, _ = pad_batch([words], bos=True)
        with torch.no_grad():
            lp = F.log_softmax(model(src, lengths, tgt)[0][0], -1)
        nxt = words + ([EOS_ID] if end else [])
        return sum(float(lp[t, w]) for t, w in enumerate(nxt))

    cands = []  # every complete target: n < max_len subwords, then </s> (max_len tokens at most)
    for n in range(0, max_len):
        for words in itertools.product([3, 4, 5], repeat=n):
            cands.append((list(words), log_prob(list(words), True)))
    best_words, best_lp = max(cands, key=lambda c: c[1])
    (hyp,) = model.translate_ids(src, lengths, beam_size=V ** max_len, max_len=max_len, length_penalty=0.0)
    assert hyp.tokens == best_words and hyp.log_prob == pytest.approx(best_lp, abs=1e-4)
    greedy = model.translate_ids(src, lengths, beam_size=1, max_len=max_len)[0]
    beam1 = showattend.search.beam_search(model._step, *model.encode(src, lengths), BOS_ID, EOS_ID, 1, max_len)
    assert greedy.tokens == beam1[0][0].tokens


def test_tokenizer_round_trip_and_unknown_characters():
    pairs = toy_pairs(300)
    tok = SubwordTokenizer.train([s for s, _ in pairs], vocab_size=40)
    for s, _ in pairs[:20]:
        assert tok.decode(tok.encode(s)) == s
    assert UNK_ID in tok.encode("ein 漢字 hund")
    again = SubwordTokenizer.from_bytes(tok.to_bytes())
    assert again.encode("der kleine mann") == tok.encode("der kleine mann")


def test_multi30k_loads_and_tokenizes():
    folder = shared_path("multi30k")
    de, en = read_parallel(f"{folder}/val.de.gz", f"{folder}/val.en.gz")
    assert len(de) == len(en) == 1014
    tok = SubwordTokenizer.train(en, vocab_size=500)
    assert all(tok.decode(tok.encode(s)) == " ".join(s.split()) for s in en[:50])


@pytest.mark.slow
@pytest.mark.parametrize("decoder,score", [("bahdanau", "concat"), ("luong", "general")])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_overfits_a_tiny_corpus(decoder, score, precision):
    """Also under bf16 autocast (--precision bf16); decoding afterwards is fp32."""
    torch.manual_seed(0)
    pairs = toy_pairs(8, seed=1)
    src_tok = SubwordTokenizer.train([s for s, _ in toy_pairs(300)], vocab_size=40)
    tgt_tok = SubwordTokenizer.train([t for _, t in toy_pairs(300)], vocab_size=30)
    cfg = tiny_cfg(decoder, score)
    cfg.src_vocab_size, cfg.tgt_vocab_size = len(src_tok), len(tgt_tok)
    model = Seq2Seq(cfg)
    src, sl = pad_batch([src_tok.encode(s) for s, _ in pairs])
    tgt_in, _ = pad_batch([tgt_tok.encode(t) for _, t in pairs], bos=True)
    tgt_out, _ = pad_batch([tgt_tok.encode(t) for _, t in pairs], eos=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(src, sl, tgt_in)[0]
        loss = F.cross_entropy(logits.float().transpose(1, 2), tgt_out, ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    bundle = Translator(model, src_tok, tgt_tok)
    assert [r.text for r in bundle.translate([s for s, _ in pairs], beam_size=3)] == [t for _, t in pairs]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small translator trained with the real training function on a toy corpus (gzip files)."""
    root = tmp_path_factory.mktemp("mt")
    for split, n in (("train", 400), ("val", 30)):
        pairs = toy_pairs(n, seed=len(split))
        with gzip.open(root / f"{split}.de.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(s for s, _ in pairs) + "\n")
        (root / f"{split}.en").write_text("\n".join(t for _, t in pairs) + "\n", encoding="utf-8")
    cfg = TranslationTrainConfig(data=str(root), out_dir=str(root / "run"), vocab_size=40, epochs=2,
                                 batch_size=16, lr=5e-3, progress=False, device="cpu", patience=10)
    model_cfg = tiny_cfg("bahdanau", "concat")
    train_translator(model_cfg, cfg)
    cfg.epochs = 3
    train_translator(model_cfg, cfg, resume=True)
    return root


def test_training_resume_and_checkpoint_round_trip(trained):
    rows = [json.loads(x) for x in open(trained / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    ckpt = torch.load(trained / "run" / "last.pt", weights_only=True)
    assert ckpt["format"] == "showattend-translator" and isinstance(ckpt["src_tokenizer"], bytes)
    best = torch.load(trained / "run" / "best.pt", weights_only=True)
    bundle = Translator.from_checkpoint(str(trained / "run" / "best.pt"), "cpu")
    state = bundle.model.state_dict()
    assert state.keys() == best["model"].keys()
    assert all(torch.equal(state[k].cpu(), best["model"][k]) for k in state)
    assert bundle.src_tok.to_bytes() == best["src_tokenizer"] and bundle.tgt_tok.to_bytes() == best["tgt_tokenizer"]
    # The validation BLEU that training measured on the model in memory is reproduced from the saved file.
    tc = best["train_config"]
    report = evaluate_translator(str(trained / "run" / "best.pt"), DataConfig(str(trained), "de", "en"), "val",
                                 beam_size=tc["val_beam_size"], length_penalty=tc["length_penalty"], device="cpu")
    assert report["sentences"] == 30 and "nrefs:1" in report["BLEU_signature"] and 0 <= report["chrF"] <= 100
    assert report["BLEU"] == pytest.approx(best["best_score"], abs=1e-9)
    assert best["best_score"] == max(r["val_bleu"] for r in best["history"])


def test_cli_translates_and_writes_alignment(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "best.pt")
    png = tmp_path / "align.png"
    assert main(["translate", "der hund schläft", "--checkpoint", ckpt, "--device", "cpu",
                 "--alignment", str(png)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert png.exists() and png.stat().st_size > 1000


def test_cli_translate_text_and_subcommands_share_the_name(trained, capsys):
    """`translate TEXT` translates; a first argument naming a subcommand selects it; after `--` it is text."""
    ckpt = str(trained / "run" / "best.pt")
    assert main(["translate", "--checkpoint", ckpt, "--device", "cpu", "ein hund", "der mann"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["translate", "--checkpoint", ckpt, "--device", "cpu", "--", "train"]) == 0  # the word itself
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        main(["translate", "evaluate", "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: showattend translate evaluate")


def test_cli_bad_input_lines(trained, monkeypatch, capsys):
    import io

    long = " ".join(["ein rot hund"] * 200)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"der mann isst\n\n漢字 ☃ ein hund\n{long}\n"))
    assert main(["translate", "--checkpoint", str(trained / "run" / "best.pt"), "--device", "cpu",
                 "--max-len", "20"]) == 0
    out, err = capsys.readouterr()
    lines = out.split("\n")
    assert len(lines) == 5 and lines[1] == "" and lines[4] == ""  # 4 outputs, the empty line stays empty
    assert "cut to" in err


def test_garbage_subword_model_in_a_checkpoint_is_named(trained, tmp_path, capsys):
    from showattend.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(str(trained / "run" / "best.pt"), None)
    save_checkpoint(str(tmp_path / "bad.pt"), {**ckpt, "src_tokenizer": b"\x00garbage" * 50})
    assert main(["translate", "ein hund", "--checkpoint", str(tmp_path / "bad.pt"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "bad.pt: the src subword model in the checkpoint is unusable (not a sentencepiece model" in err
    assert "Traceback" not in err


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["translate", "ein hund", "--checkpoint", str(tmp_path / "none.pt")]) == 1
    assert "none.pt" in capsys.readouterr().err


def test_cli_resume_respects_the_wall_time_budget(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    threads = torch.get_num_threads()
    try:  # global options before the command word, then `translate train`
        code = main(["--threads", "1", "translate", "train", "--data", str(trained), "--out-dir", str(run),
                     "--resume", "--epochs", "5", "--max-minutes", "1e-6", "--no-progress", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "stopping before epoch 4" in capsys.readouterr().err
    assert [json.loads(x)["epoch"] for x in open(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("stale, stops", [(False, True), (True, False)])
def test_resume_counts_the_time_of_an_interrupted_epoch(trained, tmp_path, capsys, stale, stops):
    """running.json says the run went on for 10 minutes after its last checkpoint and died: a 10-minute budget is
    spent. A stale file (written after an older checkpoint) is ignored, and the file is gone when the run ends."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    engine = torch.load(run / "last.pt", weights_only=True)["engine"]
    (run / "running.json").write_text(json.dumps({"spent_s": engine["spent_s"] + 600.0,
                                                  "saved_step": engine["step"] - 5 * stale}))
    code = main(["translate", "train", "--data", str(trained), "--out-dir", str(run), "--resume", "--epochs", "4",
                 "--max-minutes", "10", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().err  # the run's messages
    assert code == 0
    epochs = [json.loads(x)["epoch"] for x in open(run / "metrics.jsonl")]
    if stops:
        assert "10.0 min after the last checkpoint were lost" in out and "stopping before epoch 4" in out
        assert epochs == [1, 2, 3]
    else:
        assert "lost" not in out and epochs == [1, 2, 3, 4]
        assert not (run / "running.json").exists()
        assert torch.load(run / "last.pt", weights_only=True)["engine"]["spent_s"] < 600


def test_training_pairs_longer_than_max_len_are_dropped_not_cut():
    """A cut pair would still end its target with </s> after a fragment: such pairs are dropped and counted."""
    from showattend.translation.data import encode_pairs

    class Words:  # one id per word
        def encode(self, text):
            return [4 + len(w) for w in text.split()]

    dropped = {}
    pairs = encode_pairs(["a b", "a b c d", "", "a"], ["x y", "x", "y", "w x y z"], Words(), Words(), max_len=3,
                         dropped=dropped)
    assert pairs == [([5, 5], [5, 5])] and dropped == {"empty": 1, "too_long": 2}


def test_bleu_is_reported_in_the_three_forms_of_the_literature():
    """Cased sacreBLEU (13a), lowercased sacreBLEU, and Moses-tokenised lowercased text scored as it is (the
    multi-bleu.perl protocol): each with a signature that says which; a case difference costs only the first."""
    import sacrebleu

    from showattend.translation.evaluate import corpus_scores

    refs = ["A man rides a bike down the street.", "Two dogs play in the snow, don't they?"]
    hyps = ["a man rides a bike down the street.", "Two dogs play in the snow, don't they?"]
    s = corpus_scores(hyps, refs, "en")
    assert s["BLEU"] < 100 and s["BLEU_lc"] == 100 and s["BLEU_tok_lc"] == 100
    assert "case:mixed" in s["BLEU_signature"] and "tok:13a" in s["BLEU_signature"]
    assert "case:lc" in s["BLEU_lc_signature"]
    assert "tok:none" in s["BLEU_tok_lc_signature"] and "case:lc" in s["BLEU_tok_lc_signature"] and \
        s["BLEU_tok_lc_signature"].endswith("|pre:moses-tok")
    assert s["BLEU"] == round(sacrebleu.corpus_bleu(hyps, [refs]).score, 2)
    # the Moses form splits "don't" as "don 't" and keeps the stop as its own token
    other = corpus_scores(["two dogs play in the snow"], ["two dogs play in the snow ."], "en")
    assert other["BLEU_tok_lc"] == round(sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(
        ["two dogs play in the snow"], [["two dogs play in the snow ."]]).score, 2)
