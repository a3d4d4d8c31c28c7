"""Any image source: EXIF orientation, http(s) URLs (a local server), PIL images, numpy arrays and tensors in the API;
folders, glob patterns and ``-`` (a list on stdin) on the command line; --format text/tsv/jsonl; lazy batches."""
import functools
import http.server
import io
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from showattend.captioning import images
from showattend.captioning.images import ImageError, load_image, open_rgb
from showattend.captioning.captioner import Captioner, CaptionResult
from showattend.captioning.config import ModelConfig
from showattend.captioning.network import build_decoder
from showattend.cli import main
from showattend.captioning.vocab import Vocab


def _photo(path, seed=0, size=(80, 60)):
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[: size[1] // 2] = rng.integers(0, 255, 3)  # top half one colour, bottom another: orientation shows
    arr[size[1] // 2:] = rng.integers(0, 255, 3)
    Image.fromarray(arr).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "cup", "of", "coffee"])
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    path = str(tmp_path_factory.mktemp("tiny") / "tiny.pt")
    Captioner(build_decoder(cfg, len(vocab)), vocab, cfg, device="cpu").save(path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A static file server on 127.0.0.1 for the URL tests."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("orientation, turn", [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90),
                                               (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    """A photo stored on its side with the EXIF tag that says so comes out upright, as a viewer shows it."""
    upright = Image.open(_photo(tmp_path / "upright.jpg"))
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(turn).save(tmp_path / "stored.jpg", exif=exif, quality=95)  # the camera's raw pixels
    got = open_rgb(tmp_path / "stored.jpg")
    assert got.size == upright.size
    assert np.abs(np.asarray(got, np.int16) - np.asarray(upright.convert("RGB"), np.int16)).mean() < 3
    assert images.TRANSFORM.startswith("Pillow RGB (EXIF orientation applied")


def test_urls_are_downloaded_with_clear_errors(server, tmp_path, monkeypatch):
    root, base = server
    _photo(root / "cup.jpg")
    np.testing.assert_array_equal(np.asarray(open_rgb(f"{base}/cup.jpg")), np.asarray(open_rgb(root / "cup.jpg")))
    with pytest.raises(ImageError, match=r"/missing.jpg: HTTP 404"):
        open_rgb(f"{base}/missing.jpg")
    (root / "notes.jpg").write_text("not an image")
    with pytest.raises(ImageError, match=r"/notes.jpg: not an image file"):
        open_rgb(f"{base}/notes.jpg")
    monkeypatch.setattr(images, "URL_MAX_BYTES", 100)
    with pytest.raises(ImageError, match=r"/cup.jpg: more than 0 MB; download it first"):
        images.fetch(f"{base}/cup.jpg", max_bytes=100)
    with pytest.raises(ImageError, match=r"http://127.0.0.1:9/x.jpg: cannot download"):
        open_rgb("http://127.0.0.1:9/x.jpg")  # nothing listens on port 9


def test_api_takes_paths_pil_images_arrays_and_tensors(tiny, tmp_path):
    cap = Captioner.from_checkpoint(tiny, device="cpu")
    path = str(_photo(tmp_path / "p.jpg", size=(224, 224)))
    pil = Image.open(path)
    arr = np.array(pil.convert("RGB"))
    one = cap.caption(path, beam_size=1)  # one image alone: its result; a list: a list
    assert isinstance(one, CaptionResult) and [r.text for r in cap.caption([path, path], beam_size=1)] == [one.text] * 2
    ref = [one]
    for source in (pil, arr, torch.from_numpy(arr).permute(2, 0, 1).float() / 255):
        got = cap.caption([source], beam_size=1)[0]
        assert got.text == ref[0].text and torch.allclose(got.alphas, ref[0].alphas, atol=1e-4)
    big = torch.rand(3, 300, 400)  # any size: resized like a file would be
    assert load_image(big, 224).shape == (3, 224, 224)
    with pytest.raises(ImageError, match=r"must be \(3, H, W\), got \(4, 10, 10\)"):
        load_image(torch.rand(4, 10, 10))


def test_cli_folders_patterns_stdin_urls_and_formats(tiny, server, tmp_path, monkeypatch, capsys):
    root, base = server
    _photo(root / "web.jpg", seed=3)
    album = tmp_path / "album"
    (album / "sub").mkdir(parents=True)
    a, b = str(_photo(album / "a.jpg", 1)), str(_photo(album / "sub" / "b.png", 2))
    common = ["--checkpoint", tiny, "--device", "cpu", "--beam-size", "1", "--max-len", "4"]
    assert main(["caption", str(album), *common]) == 0
    by_folder = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in by_folder] == [a, b]
    assert main(["caption", str(album / "**" / "*.*"), *common, "--batch-size", "1"]) == 0  # a quoted pattern
    assert capsys.readouterr().out.splitlines() == by_folder
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{a}\n\n{b}\n"))
    assert main(["caption", "-", *common]) == 0
    assert capsys.readouterr().out.splitlines() == by_folder
    assert main(["caption", f"{base}/web.jpg", a, *common, "--format", "jsonl", "--alphas",
                 "--attention-dir", str(tmp_path / "over")]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == [f"{base}/web.jpg", a]
    for r in rows:
        assert len(r["alphas"]) == len(r["words"]) + 1 and len(r["alphas"][0]) == r["grid"][0] * r["grid"][1]
        assert all(abs(sum(row) - 1) < 1e-3 for row in r["alphas"]) and r["log_prob"] < 0
    assert (tmp_path / "over" / "web_attention.png").exists() and (tmp_path / "over" / "a_attention.png").exists()
    assert main(["caption", a, *common, "--format", "tsv"]) == 0
    assert capsys.readouterr().out.startswith(f"{a}\t")
    assert main(["caption", str(tmp_path / "nothing*.jpg"), a, *common]) == 1
    err = capsys.readouterr().err
    assert "nothing*.jpg: no file matches this pattern" in err and "1 of 2 images failed" in err
