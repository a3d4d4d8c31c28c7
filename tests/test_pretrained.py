"""The bundled models and the public API: the registry, its checks, ``from_pretrained``, ``showattend models``, the
names ``import showattend`` offers, and the built wheel installed into a fresh virtualenv and used from another
directory."""
import dataclasses
import glob
import os
import re
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import showattend
import showattend.captioning
import showattend.translation
from conftest import ASSETS, ROOT
from showattend import pretrained
from showattend.checkpoint import CheckpointError
from showattend.cli import main

PHOTO = os.path.join(ASSETS, "photos", "coffee.jpg")


def test_registry_metadata_and_lookup():
    assert pretrained.list_models() == ["flickr8k-lite2-soft", "flickr8k-lite2-hard", "multi30k-de-en"]
    assert pretrained.list_models("translation") == ["multi30k-de-en"]
    m = pretrained.get_model("flickr8k-lite2-soft")
    assert m.task == "captioning" and m.metrics["BLEU-4"] == 23.91 and m.decoding["beam_size"] == 3
    assert "research use" in m.data_licence and "test split" in m.evaluation
    path = pretrained.weights_file("flickr8k-lite2-soft")
    assert path.is_file() and abs(path.stat().st_size / 2 ** 20 - m.size_mib) < 1
    assert (path.parent / m.card).is_file()
    with pytest.raises(ValueError, match=r"no bundled captioning model 'flickr8k-lite0-soft'.*did you mean "
                                         r"'flickr8k-lite2-soft'"):
        pretrained.get_model("flickr8k-lite0-soft", "captioning")  # the bundled model until 1 December 2026
    with pytest.raises(ValueError, match="no bundled translation model 'multi30k-en-de'.*did you mean"):
        showattend.translation.Translator.from_pretrained("multi30k-en-de")
    t = pretrained.get_model("multi30k-de-en", "translation")
    path = pretrained.weights_file("multi30k-de-en")
    assert abs(path.stat().st_size / 2 ** 20 - t.size_mib) < 1 and (path.parent / t.card).is_file()
    assert t.decoding == {"beam_size": 5, "length_penalty": 1.0} and t.metrics["BLEU"] > 30


@pytest.mark.parametrize("name", pretrained.list_models())
def test_every_bundled_model_loads_with_its_card_and_decoding(name):
    """Each registry entry: its file (checked against its SHA-256), its size, its card, decoding options the
    commands have, and a model that loads as the entry says (a hard-attention captioner for the hard one)."""
    m = pretrained.get_model(name)
    path = pretrained.weights_file(name)
    assert abs(path.stat().st_size / 2 ** 20 - m.size_mib) < 0.1 and (path.parent / m.card).is_file()
    card = (path.parent / m.card).read_text(encoding="utf-8")
    assert card.startswith(f"# {name}\n") and "showattend export" in card  # how its file was made
    if m.task == "captioning":
        cap = showattend.captioning.Captioner.from_pretrained(name, device="cpu")
        assert cap.config.attention == ("hard" if name.endswith("-hard") else "soft")
        assert cap.decoding == {k: m.decoding[k] for k in ("beam_size", "length_penalty")}
        assert f"| {m.metrics['BLEU-4']:.2f} | {m.metrics['METEOR']:.2f} |" in card  # the card's test row
    else:
        showattend.translation.Translator.from_pretrained(name, device="cpu")


def test_the_bundled_soft_models_fine_tuned_encoder_blocks_are_its_own():
    """flickr8k-lite2-soft was trained with the encoder's top 2 blocks fine-tuned: its file carries them, and
    loading it puts them in place of ImageNet's while the frozen trunk stays ImageNet's."""
    import torch
    from showattend.captioning.encoders import Encoder

    cap = showattend.captioning.Captioner.from_pretrained("flickr8k-lite2-soft", device="cpu")
    assert cap.config.fine_tune_blocks == 2
    imagenet = Encoder("efficientnet_lite2", fine_tune_blocks=2)
    top = {n.rsplit(".", 1)[0] for n, p in imagenet.named_parameters() if p.requires_grad}  # its 2 blocks' modules
    reference = imagenet.state_dict()
    changed = {k.rsplit(".", 1)[0] for k, v in cap.encoder.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, reference[k])}
    assert changed == top, sorted(changed ^ top)


def test_the_bundled_hard_model_captions_from_the_command_line(capsys):
    assert main(["caption", PHOTO, "--model", "flickr8k-lite2-hard", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.split()) >= 3


def test_the_bundled_translator_translates():
    """`Translator.from_pretrained` and `showattend translate` with no path: the bundled De->En model."""
    tr = showattend.translation.Translator.from_pretrained("multi30k-de-en", device="cpu")
    out = tr.translate("Ein Hund läuft durch das Gras.", beam_size=5)  # one sentence: one result
    assert {"dog", "grass"} <= set(out.text.lower().replace(".", " ").split()), out.text
    assert [r.text for r in tr.translate(["Ein Hund läuft durch das Gras."] * 2, beam_size=5)] == [out.text] * 2


def test_a_damaged_bundled_file_is_reported(monkeypatch):
    m = pretrained.PRETRAINED["flickr8k-lite2-soft"]
    monkeypatch.setitem(pretrained.PRETRAINED, "damaged", dataclasses.replace(m, name="damaged", sha256="0" * 64))
    with pytest.raises(CheckpointError, match="the weights of damaged are damaged"):
        pretrained.weights_file("damaged")
    monkeypatch.setitem(pretrained.PRETRAINED, "gone", dataclasses.replace(m, name="gone", file="gone.pt"))
    with pytest.raises(FileNotFoundError, match="missing from this installation"):
        pretrained.weights_file("gone")


def test_from_pretrained_is_the_bundled_checkpoint():
    a = showattend.captioning.Captioner.from_pretrained("flickr8k-lite2-soft", device="cpu")
    b = showattend.captioning.Captioner.from_checkpoint(str(pretrained.weights_file("flickr8k-lite2-soft")), device="cpu")
    assert a.caption([PHOTO], beam_size=2)[0].text == b.caption([PHOTO], beam_size=2)[0].text


def test_a_bundled_models_decoding_defaults_apply_where_none_is_given(monkeypatch, tmp_path):
    """The registry's decoding (the validation split's best) is the default of the CLI and of from_pretrained; an
    option given, or a --checkpoint, keeps its own."""
    from showattend.captioning.captioner import Captioner
    from showattend.cli import parse

    want = pretrained.get_model("flickr8k-lite2-soft").decoding
    assert want["length_penalty"] != 0.0  # else this test proves nothing
    for command in (["caption", PHOTO], ["evaluate", "--data", "x.json", "--images", "."]):
        d = parse(command)[1].decoding
        assert (d.beam_size, d.length_penalty) == (want["beam_size"], want["length_penalty"]), command
        d = parse(command + ["--length-penalty", "0", "--beam-size=5"])[1].decoding
        assert (d.beam_size, d.length_penalty) == (5, 0.0), command
    path = str(pretrained.weights_file("flickr8k-lite2-soft"))
    d = parse(["caption", PHOTO, "--checkpoint", path])[1].decoding
    assert (d.beam_size, d.length_penalty) == (3, 0.0)
    t = parse(["translate", "Ein Hund.", "--beam-size", "2"])[1].decoding
    assert (t.beam_size, t.length_penalty) == (2, pretrained.get_model("multi30k-de-en").decoding["length_penalty"])
    calls = []
    monkeypatch.setattr(Captioner, "_decode", lambda self, a, beam, max_len, lp, *rest: calls.append((beam, lp)) or
                        [None] * len(a))
    feats = __import__("torch").zeros(1, 81, 1280)
    Captioner.from_pretrained("flickr8k-lite2-soft", device="cpu").decode(feats)
    Captioner.from_pretrained("flickr8k-lite2-soft", device="cpu").decode(feats, beam_size=1, length_penalty=0.0)
    Captioner.from_checkpoint(path, device="cpu").decode(feats)
    assert calls == [(want["beam_size"], want["length_penalty"]), (1, 0.0), (3, 0.0)]


def test_models_command_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flickr8k-lite2-soft (the default)") and "BLEU-4 23.91" in out and "research use" in out
    cards = re.findall(r"^  card: +(.+)$", out, flags=re.M)  # where a user finds each card
    assert len(cards) == 3 and all(os.path.isfile(c) and open(c).readline().startswith("# ") for c in cards)
    assert main(["models", "--task", "translation"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("multi30k-de-en (the default)") and "flickr8k" not in out and "BLEU" in out


def test_public_api_names_resolve():
    """The core offers its own names; each application its own, and the core never imports an application."""
    import showattend.captioning
    import showattend.translation
    from showattend.captioning.captioner import Captioner
    from showattend.translation.translator import Translator

    for module in (showattend, showattend.captioning, showattend.translation):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
        assert set(module.__all__) <= set(dir(module))
    assert showattend.captioning.Captioner is Captioner and showattend.translation.Translator is Translator
    with pytest.raises(AttributeError):
        showattend.translation.TranslatorBundle  # the old name is gone
    assert os.path.isfile(os.path.join(os.path.dirname(showattend.__file__), "py.typed"))
    core = subprocess.run([sys.executable, "-c", "import sys, showattend, showattend.commands, showattend.report, "
                           "showattend.engine, showattend.pretrained; "
                           "print(sorted(m for m in sys.modules if m.startswith(('showattend.captioning', "
                           "'showattend.translation'))))"], capture_output=True, text=True, check=True)
    assert core.stdout.strip() == "[]"  # importing the core loads no application


@pytest.mark.slow
def test_the_wheel_installs_and_captions_from_another_directory(tmp_path):
    """Build the wheel, install it (without dependencies) into a fresh virtualenv that finds the dependencies in
    the project's environment (offline), and use it from a directory outside the checkout: the CLI with no model
    path, and the README's Python API."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    ROOT], check=True, capture_output=True)
    wheel, = glob.glob(str(dist / "showattend-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"showattend/weights/flickr8k-lite2-soft.pt", "showattend/weights/flickr8k-lite2-hard.pt",
            "showattend/weights/flickr8k-lite2-hard.md", "showattend/weights/multi30k-de-en.pt",
            "showattend/weights/multi30k-de-en.md", "showattend/py.typed",
            *(f"showattend/page/{f}" for f in os.listdir(os.path.join(ROOT, "showattend", "page")))} <= set(names)
    assert os.path.getsize(wheel) < 60 * 2 ** 20
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "project_deps.pth"), "w") as f:  # after the venv's own site-packages
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True,
                   capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    where = subprocess.run([py, "-c", "import showattend; print(showattend.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(site), where  # the wheel's copy, not the checkout
    out = subprocess.run([str(venv / "bin" / "showattend"), "caption", PHOTO, "--device", "cpu", "--html", "r.html"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.split()) >= 3, out.stderr
    page = (elsewhere / "r.html").read_text()
    assert "function colour" in page  # the page's script, from the wheel's data
    assert "showattend caption: 1 image, flickr8k-lite2-soft, beam 3, length penalty 1" in page  # its defaults
    code = ("from showattend.captioning import Captioner, open_rgb, plot_attention\n"
            "cap = Captioner.from_pretrained('flickr8k-lite2-soft')\n"
            f"r = cap.caption({PHOTO!r}, beam_size=3)\n"
            f"plot_attention(open_rgb({PHOTO!r}), r.words, r.alphas, r.grid, 'coffee.png')\n"
            "print(r.text)\n")
    api = subprocess.run([py, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert api.returncode == 0, api.stderr
    assert api.stdout.strip() == out.stdout.strip() and (elsewhere / "coffee.png").stat().st_size > 10_000
    tr = subprocess.run([str(venv / "bin" / "showattend"), "translate", "Ein Hund läuft.", "--device", "cpu"],
                        cwd=elsewhere, env=env, capture_output=True, text=True)
    assert tr.returncode == 0 and "dog" in tr.stdout.lower(), tr.stderr
