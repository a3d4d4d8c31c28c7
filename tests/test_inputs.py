"""Images, checkpoints and the CLI: conversions, bad input, atomic checkpoints, round-trips, overlays."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ASSETS
from showattend.captioning.network import Decoder
from showattend.captioning.images import ImageError, load_image, open_rgb
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import ModelConfig
from showattend.captioning.network import build_decoder
from showattend.checkpoint import CheckpointError, load_checkpoint, quantize_int8, save_checkpoint
from showattend.cli import main
from showattend.captioning.vocab import Vocab

PHOTO = os.path.join(ASSETS, "photos", "coffee.jpg")
BUNDLED = os.path.join(ASSETS, "flickr8k-lite2-soft.pt")


def _tiny_captioner():
    """A small random-weight captioner on the real Lite0 encoder (the same weights on every call)."""
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "cup", "of", "coffee"])
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    decoder = build_decoder(cfg, len(vocab))
    with torch.no_grad():
        decoder.L_o.bias[vocab.end] = -20.0  # never ends by choice: --max-len - 1 words, then the forced <end>
    return Captioner(decoder, vocab, cfg, device="cpu")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """:func:`_tiny_captioner` saved as a checkpoint."""
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
    _tiny_captioner().save(path)
    return path


# -- images ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "I;16"])
def test_image_modes_are_converted(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    x = load_image(path, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_rgba_is_composited_on_white(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(tmp_path / "t.png")  # fully transparent red
    assert np.asarray(open_rgb(tmp_path / "t.png")).min() == 255


def test_very_large_image_is_reduced(tmp_path):
    Image.new("RGB", (12000, 9000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=50)
    img = open_rgb(tmp_path / "big.jpg", max_side=4096)
    assert max(img.size) <= 4096
    assert load_image(tmp_path / "big.jpg", 64).shape == (3, 64, 64)


def test_bad_image_files_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    for name, msg in [("missing.jpg", "no such file"), ("empty.jpg", "empty"), ("text.jpg", "not an image"),
                      ("trunc.jpg", "cannot decode")]:
        with pytest.raises(ImageError, match=msg) as err:
            load_image(tmp_path / name)
        assert name in str(err.value)


# -- checkpoints -----------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)  # plain data, no pickled modules
    assert ckpt["format"] == "showattend-captioner" and ckpt["vocab"][4:] == ["a", "cup", "of", "coffee"]
    original = _tiny_captioner()  # the model in memory before it was saved
    loaded = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    for k, v in original.decoder.state_dict().items():
        assert torch.equal(v, loaded.decoder.state_dict()[k]), k
    assert loaded.vocab.itos == original.vocab.itos and loaded.config == original.config
    feats = torch.randn(3, 49, 1280)
    for beam in (1, 3):
        want, got = original.decode(feats, beam_size=beam), loaded.decode(feats, beam_size=beam)
        assert [r.words for r in got] == [r.words for r in want]
        assert [r.log_prob for r in got] == pytest.approx([r.log_prob for r in want], abs=1e-5)


def test_fp16_checkpoint_loads_as_float32(tmp_path, tiny_checkpoint):
    a = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    a.save(str(tmp_path / "half.pt"), half=True)
    b = Captioner.from_checkpoint(str(tmp_path / "half.pt"), device="cpu")
    for k, v in a.decoder.state_dict().items():
        w = b.decoder.state_dict()[k]
        assert w.dtype == v.dtype and torch.allclose(w, v, atol=1e-2, rtol=1e-3)


def test_int8_quantisation_by_hand():
    w = torch.tensor([[0.0, 1.27, -0.5], [0.0, 0.0, 0.0], [2.54, -1.0, 0.5]])
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float16
    assert s.float().tolist() == pytest.approx([0.01, 0.0, 0.02], rel=1e-3)  # max |w_row| / 127, an empty row 0
    assert q.tolist() == [[0, 127, -50], [0, 0, 0], [127, -50, 25]]  # w / s with s rounded to float16 first


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_export_loads_within_half_a_step(tmp_path, tiny_checkpoint, seed):
    from showattend.cli import main

    torch.manual_seed(seed)
    a = Captioner.from_checkpoint(tiny_checkpoint, device="cpu")
    conv = torch.randn(8, 4, 3, 3)  # a fine-tuned encoder's 4-D weights: one scale per output channel
    save_checkpoint(str(tmp_path / "src.pt"), {**a.state(), "encoder": {"conv.weight": conv, "bn.num": torch.tensor(3)}})
    assert main(["export", str(tmp_path / "src.pt"), str(tmp_path / "q.pt"), "--int8"]) == 0
    raw = torch.load(tmp_path / "q.pt", weights_only=True)
    assert raw["model"]["lstm.weight_ih"].dtype == torch.int8 and raw["encoder"]["conv.weight"].dtype == torch.int8
    assert raw["model"]["lstm.bias_ih"].dtype == torch.float16 and raw["encoder"]["bn.num"].dtype == torch.int64
    assert main(["export", str(tmp_path / "src.pt"), str(tmp_path / "h.pt"), "--half"]) == 0
    assert os.path.getsize(tmp_path / "q.pt") < 0.6 * os.path.getsize(tmp_path / "h.pt")
    loaded = load_checkpoint(str(tmp_path / "q.pt"), "showattend-captioner")
    assert "int8_scales" not in loaded
    for part, want in (("model", a.decoder.state_dict()), ("encoder", {"conv.weight": conv})):
        for k, v in want.items():
            w = loaded[part][k]
            assert w.dtype == (torch.float32 if v.ndim >= 2 else torch.float16) and w.shape == v.shape, k
            if v.ndim >= 2:  # within half a quantisation step of the row's scale
                step = v.reshape(len(v), -1).abs().amax(1) / 127
                err = (w - v).reshape(len(v), -1).abs().amax(1)
                assert bool((err <= step * 0.5005 + 1e-7).all()), k
    b = Captioner.from_checkpoint(str(tmp_path / "q.pt"), device="cpu")
    feats = torch.randn(2, 49, 1280)
    got, want = b.decode(feats, beam_size=2), a.decode(feats, beam_size=2)
    assert [r.log_prob for r in got] == pytest.approx([r.log_prob for r in want], abs=0.05)
    edited = {**raw, "int8_scales": {"model": {"lstm.weight_ih": raw["int8_scales"]["model"]["lstm.weight_ih"][:3]}}}
    save_checkpoint(str(tmp_path / "edited.pt"), {k: v for k, v in edited.items() if k != "checksum"})
    with pytest.raises(CheckpointError, match="lstm.weight_ih is missing or does not match its scales"):
        Captioner.from_checkpoint(str(tmp_path / "edited.pt"))


def test_bad_checkpoints(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="not found"):
        Captioner.from_checkpoint(str(tmp_path / "nope.pt"))
    data = open(tiny_checkpoint, "rb").read()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cannot read"):
        Captioner.from_checkpoint(str(tmp_path / "trunc.pt"))
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    for change, msg in [({"format": "showattend-translator"}, "expected 'showattend-captioner'"),
                        ({"format_version": 99}, "format version 99"),
                        ({"vocab": ckpt["vocab"] + ["extra"]}, "contents do not match the checksum")]:
        torch.save({**ckpt, **change}, tmp_path / "bad.pt")  # edited, the old checksum kept
        with pytest.raises(CheckpointError, match=msg):
            Captioner.from_checkpoint(str(tmp_path / "bad.pt"))
    save_checkpoint(str(tmp_path / "bad.pt"), {**ckpt, "vocab": ckpt["vocab"] + ["extra"]})  # a new checksum
    with pytest.raises(CheckpointError, match=r"decoder tensor \S+ has shape \(\d+, \d+\), its config makes"):
        Captioner.from_checkpoint(str(tmp_path / "bad.pt"))
    torch.save(Decoder(5, 4), tmp_path / "module.pt")  # a whole pickled module is refused
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "module.pt"), "showattend-captioner")


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"format": "x", "v": torch.ones(2)})

    class Unsaveable:
        pass

    with pytest.raises(Exception):
        save_checkpoint(path, {"format": "x", "v": Unsaveable()})
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(2))
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


# -- CLI -------------------------------------------------------------------------------------------------
def test_cli_captions_and_writes_overlay(tmp_path, tiny_checkpoint, capsys):
    code = main(["caption", PHOTO, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--beam-size", "2",
                 "--max-len", "4", "--attention-dir", str(tmp_path)])
    assert code == 0
    caption = capsys.readouterr().out.strip()
    # the model never chooses <end>: 3 words, then the <end> forced as the 4th token
    assert len(caption.split()) == 3 and set(caption.split()) <= {"a", "cup", "of", "coffee"}
    png = tmp_path / "coffee_attention.png"
    assert png.exists() and Image.open(png).size[0] > 300


def test_quiet_and_verbose_change_the_messages_not_the_results(tmp_path, tiny_checkpoint, capsys):
    args = ["caption", PHOTO, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--attention-dir", str(tmp_path)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "attention overlay:" in err and out.strip()
    assert main(["--quiet", *args]) == 0
    quiet_out, quiet_err = capsys.readouterr()
    assert quiet_out == out and "attention overlay" not in quiet_err  # the same result, no notes
    assert main(["--quiet", "caption", str(tmp_path / "missing.jpg"), "--checkpoint", tiny_checkpoint]) == 1
    assert "missing.jpg: no such file" in capsys.readouterr().err  # errors still shown
    assert main(["--quiet", "--verbose", *args]) == 2
    assert "--quiet and --verbose exclude each other" in capsys.readouterr().err


def test_cli_reports_bad_files_and_still_captions_the_others(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "empty.jpg").write_bytes(b"")
    code = main(["caption", PHOTO, str(tmp_path / "empty.jpg"), str(tmp_path / "missing.png"),
                 "--checkpoint", tiny_checkpoint, "--device", "cpu", "--max-len", "3"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.startswith(PHOTO + "\t")
    assert "empty.jpg: empty file" in err and "missing.png: no such file" in err and "2 of 3 images failed" in err


@pytest.mark.slow
def test_comparison_figure_stacks_one_block_per_checkpoint(tmp_path, tiny_checkpoint, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_attention",
                                                  os.path.join(ASSETS, "..", "scripts", "compare_attention.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    common = [PHOTO, "--device", "cpu", "--beam-size", "1", "--columns", "5"]
    assert script.main([*common, "--checkpoint", tiny_checkpoint, "--out", str(one)]) == 0
    assert script.main([*common, "--checkpoint", tiny_checkpoint, "--checkpoint", tiny_checkpoint,
                        "--label", "first", "--label", "second", "--out", str(two)]) == 0
    out = capsys.readouterr().out
    assert "first: " in out and "second: " in out
    # 20 words + the image = 21 panels = 5 lines of 5 per block; two blocks are about twice as tall
    h1, h2 = Image.open(one).size[1], Image.open(two).size[1]
    assert 1.8 < h2 / h1 < 2.2
    assert script.main([str(tmp_path / "missing.jpg"), "--checkpoint", tiny_checkpoint]) == 1
    with pytest.raises(ValueError):
        from showattend.captioning.overlay import plot_attention_rows
        plot_attention_rows(Image.open(PHOTO), [], (7, 7), str(tmp_path / "none.png"))


def test_cli_bad_checkpoint_exits_nonzero(tmp_path, capsys):
    (tmp_path / "x.pt").write_text("garbage")
    assert main(["caption", PHOTO, "--checkpoint", str(tmp_path / "x.pt")]) == 1
    assert "x.pt" in capsys.readouterr().err


def _flip(path, offset, n=4096):
    data = bytearray(open(path, "rb").read())
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("where", [0.3, 0.6, 0.9])
def test_flipped_bits_are_a_corrupt_checkpoint_not_a_crash(tiny_checkpoint, tmp_path, where):
    """4 KB of flipped bits inside the tensor data: the checksum written with the checkpoint does not match."""
    path = tmp_path / "flipped.pt"
    path.write_bytes(open(tiny_checkpoint, "rb").read())
    _flip(path, int(path.stat().st_size * where))
    with pytest.raises(CheckpointError, match=r"flipped.pt: (corrupt checkpoint: its contents do not match the "
                                              r"checksum|cannot read checkpoint)"):
        Captioner.from_checkpoint(str(path), device="cpu")


def test_checkpoint_fields_and_shapes_are_checked_before_loading(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint, None)
    assert ckpt["checksum"].startswith("sha256:") and len(ckpt["checksum"]) == 71
    no_vocab = {k: v for k, v in ckpt.items() if k not in ("vocab", "checksum")}
    save_checkpoint(str(tmp_path / "a.pt"), no_vocab)
    with pytest.raises(CheckpointError, match="a.pt: incomplete showattend-captioner checkpoint: no vocab"):
        Captioner.from_checkpoint(str(tmp_path / "a.pt"), device="cpu")
    name = next(iter(ckpt["model"]))
    wrong = {**ckpt, "model": {**ckpt["model"], name: torch.zeros(3, 3)}}
    save_checkpoint(str(tmp_path / "b.pt"), wrong)  # a valid checksum over a wrong tensor
    with pytest.raises(CheckpointError, match=rf"b.pt: decoder tensor {name} has shape \(3, 3\), its config makes"):
        Captioner.from_checkpoint(str(tmp_path / "b.pt"), device="cpu")
    extra = {**ckpt, "model": {**ckpt["model"], "surplus.weight": torch.zeros(1)}}
    save_checkpoint(str(tmp_path / "c.pt"), extra)
    with pytest.raises(CheckpointError, match=r"c.pt: the decoder weights do not match its config: 1 unexpected"):
        Captioner.from_checkpoint(str(tmp_path / "c.pt"), device="cpu")
    bad_config = {**ckpt, "config": {**ckpt["config"], "hidden_dim": "many"}}
    save_checkpoint(str(tmp_path / "d.pt"), bad_config)
    with pytest.raises(CheckpointError, match=r"d.pt: bad model config"):
        Captioner.from_checkpoint(str(tmp_path / "d.pt"), device="cpu")
    legacy = {k: v for k, v in ckpt.items() if k != "checksum"}  # written before checksums: loads unverified
    torch.save(legacy, tmp_path / "legacy.pt")
    assert Captioner.from_checkpoint(str(tmp_path / "legacy.pt"), device="cpu").vocab.itos == ckpt["vocab"]


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "showattend.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--ds-lambda" in out.stdout and "doubly stochastic" in out.stdout


@pytest.mark.parametrize("command", [["train"], ["cache"], ["caption"], ["evaluate"], ["export"], ["translate"],
                                     ["translate", "train"], ["translate", "evaluate"]])
def test_every_option_has_its_whole_docstring_entry_as_help(command, capsys):
    """tyro reads the help of each option from the ``Attributes:`` entry of its dataclass field (inherited ones
    too): an undocumented field would show only its default."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: showattend {' '.join(command)} ")
    flags = re.findall(r"^[│ ] +(--[a-z-]+)", out, flags=re.M)  # boxed on a UTF-8 terminal, plain otherwise
    assert flags and "--help" not in flags  # "-h, --help" starts with -h
    undocumented = re.findall(r"^[│ ] +(--[a-z-]+)(?: [A-Z{][^ ]*)?\s+\((?:default|required)", out, flags=re.M)
    assert undocumented == []
    text = " ".join(out.replace("│", " ").split())
    if command == ["translate", "train"]:  # an entry continued over several lines, whole; inherited from the engine
        assert "plus the last epoch's time would exceed it. (default: 0.0)" in text
        assert "--src-vocab-size" not in out  # set from the subword models, not an option
    if command == ["train"]:
        assert "--score {additive,general,dot}" in out and "--ds-normalisation {mean,eq14,capgen}" in out


def test_top_level_help_lists_the_command_tree_and_rejects_unknown_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "cache", "caption", "evaluate", "export", "translate", "translate train",
                 "translate evaluate"):
        assert re.search(rf"^  {name} +[A-Z]", out, flags=re.M), name
    assert main(["trian"]) == 2
    assert "unknown command 'trian' (did you mean 'train'?)" in capsys.readouterr().err
    assert main(["--threads", "-1", "train"]) == 2
    assert "--threads needs a number of threads >= 0, got '-1'" in capsys.readouterr().err
    assert main([]) == 2 and "a command is required" in capsys.readouterr().err
    assert main(["train", "--score", "bad"]) == 2  # tyro's usage error, as one line like the others
    err = capsys.readouterr().err
    assert err.startswith("showattend train: error: invalid choice 'bad' for argument '--score'") and \
        err.count("\n") == 1 and "╭" not in err
    assert main(["caption"]) == 2
    assert main(["--bogus", "--version"]) == 2 and "unknown option --bogus" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(BUNDLED), reason="bundled model not present")
def test_bundled_model_captions_sample_photos(tmp_path, capsys):
    photos = sorted(os.path.join(ASSETS, "photos", f) for f in os.listdir(os.path.join(ASSETS, "photos"))
                    if not f.endswith(".md"))
    assert main(["caption", *photos, "--device", "cpu", "--attention-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(photos)
    # the bundled soft model of 2 December (fine-tuned Lite2, then SCST) with its defaults: beam 3, length penalty 1
    assert {os.path.basename(ln.split("\t")[0]): ln.split("\t")[1] for ln in lines} == {
        "astronaut.jpg": "a man in a red uniform is playing with a football",
        "cat.jpg": "a brown dog is standing on its hind legs",
        "coffee.jpg": "a man is sitting on a bench",
        "rocket.jpg": "a man is standing in front of a large building in the water",
        "cameraman_gray.png": "a man in a black jacket is looking at a video camera"}
    vocab = set(Captioner.from_checkpoint(BUNDLED, device="cpu").vocab.itos[4:])
    for line in lines:
        words = line.split("\t")[1].split()
        assert 2 <= len(words) <= 20 and set(words) <= vocab
    assert len(list(tmp_path.glob("*_attention.png"))) == len(photos)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_caption_stream_keeps_the_order_and_a_bad_file_drops_only_itself(tmp_path, num_workers):
    """Images read in worker processes, batches of 2: results come in the input order, a broken file yields its
    error in its place, and each caption equals captioning that image alone."""
    cap = _tiny_captioner()
    paths = []
    for i, colour in enumerate([(200, 30, 30), None, (30, 200, 30), (30, 30, 200), (90, 90, 90)]):
        p = tmp_path / f"{i}.jpg"
        if colour is None:
            p.write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (40 + 7 * i, 30), colour).save(p)
        paths.append(str(p))
    out = list(cap.caption_stream(paths, batch_size=2, num_workers=num_workers, beam_size=2, max_len=5))
    assert [p for p, _ in out] == paths
    assert isinstance(out[1][1], str) and "1.jpg" in out[1][1]
    for p, r in out[:1] + out[2:]:
        assert r.words == cap.caption(p, beam_size=2, max_len=5).words


def test_output_closed_early_stops_quietly():
    """`showattend models | head -1`: the reader goes away before the command writes; no error message."""
    p = subprocess.Popen([sys.executable, "-m", "showattend", "models"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the interpreter has even imported showattend
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Broken pipe" not in err and "error" not in err, err
    assert p.returncode == 1


@pytest.mark.parametrize("command", [["evaluate"], ["translate", "evaluate"]])
def test_data_options_help_says_when_there_is_no_default(command, monkeypatch, capsys):
    def help_text():
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", capsys.readouterr().out).split())

    monkeypatch.delenv("SHOWATTEND_DATA", raising=False)
    text = help_text()
    assert "(default: none, $SHOWATTEND_DATA is unset)" in text and "(default: )" not in text
    monkeypatch.setenv("SHOWATTEND_DATA", "/data")
    text = help_text()
    assert "(default: /data/" in text and "is unset)" not in text
