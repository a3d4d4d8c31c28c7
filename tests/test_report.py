"""The HTML reports in a real headless browser: Debian's Chromium driven by Playwright (no browser download). The page
is opened from disk with no server; a click on a word draws its attention map, another word draws another, the
cards sort by a score and filter by text; the translation report highlights a cell's subwords. Skips, with the
reason, where Chromium or Playwright is missing (scripts/_env.sh installs both on CI)."""
import json
import shutil

import pytest
import torch

from conftest import write_toy_images
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import ModelConfig
from showattend.captioning.network import build_decoder
from showattend.cli import main
from showattend.report import write_alignment_report
from showattend.translation.plot import report_items
from showattend.translation.translator import TranslationResult
from showattend.captioning.vocab import Vocab

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip says why
    sync_playwright = None

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
              pytest.mark.skipif(sync_playwright is None, reason="playwright (Python) is not installed")]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def evaluation_report(tmp_path_factory):
    """`showattend evaluate --html` of a tiny random captioner on 6 toy images (references and per-image scores)."""
    root = tmp_path_factory.mktemp("report")
    data = write_toy_images(root / "toy", n=9, splits=(6, 8), size=64)
    torch.manual_seed(0)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "red", "green", "blue", "square", "box"])
    cfg = ModelConfig(embed_dim=16, hidden_dim=16, attention_dim=8)
    ckpt = str(root / "tiny.pt")
    Captioner(build_decoder(cfg, len(vocab)), vocab, cfg, device="cpu").save(ckpt)
    html = root / "report.html"
    assert main(["evaluate", "--checkpoint", ckpt, "--data", str(data / "dataset_toy.json"), "--images",
                 str(data / "images"), "--split", "train", "--cache-dir", str(root / "cache"), "--device", "cpu",
                 "--beam-size", "2", "--max-len", "6", "--metrics", "bleu", "cider", "--html", str(html)]) == 0
    return html


def test_caption_report_words_sorting_and_filtering(browser, evaluation_report, tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())  # self-contained: any network request would fail the page
    page.goto(evaluation_report.as_uri())
    cards = page.locator(".card")
    assert cards.count() == 6 and page.locator("#count").text_content() == "6 of 6 images"
    card = cards.nth(0)
    blank = card.locator("canvas").evaluate("c => c.toDataURL()")
    card.locator(".word").nth(1).click()
    assert card.get_attribute("data-shown") == "1"
    first = card.locator("canvas").evaluate("c => c.toDataURL()")
    assert first != blank and "β =" in card.locator(".beta").text_content()
    card.locator(".word").nth(2).click()
    second = card.locator("canvas").evaluate("c => c.toDataURL()")
    assert second not in (blank, first)  # another word, another map
    assert card.locator(".word.active").count() == 1
    page.screenshot(path=str(tmp_path / "report.png"))
    # sort by CIDEr, high first: the cards follow the per-image scores
    page.select_option("#sort", "CIDEr|high")
    order = page.locator(".card").evaluate_all("cs => cs.map(c => +c.dataset.idx)")
    data = json.loads(page.locator("#data").text_content())
    ciders = [data["items"][i]["scores"]["CIDEr"] for i in order]
    assert ciders == sorted(ciders, reverse=True) and len(set(ciders)) > 1
    page.select_option("#sort", "CIDEr|low")
    order = page.locator(".card").evaluate_all("cs => cs.map(c => +c.dataset.idx)")
    assert [data["items"][i]["scores"]["CIDEr"] for i in order] == sorted(ciders)
    # filter by text (caption, references and name): one image's name
    page.fill("#filter", "3.jpg")
    expected = sum("3.jpg" in " ".join([it["caption"], it["name"], *it["references"]]) for it in data["items"])
    assert expected == 1
    assert page.locator(".card:not(.hidden)").count() == expected
    assert page.locator("#count").text_content() == f"{expected} of 6 images"
    assert errors == []


def test_alignment_report_highlights_a_cells_subwords(browser, tmp_path):
    alpha = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    results = [TranslationResult("a dog runs", ["▁ein", "▁hund", "▁läuft"], ["▁a", "▁dog", "</s>"], alpha, -1.0)]
    write_alignment_report(str(tmp_path / "align.html"), report_items(results), "toy")
    page = browser.new_page()
    page.goto((tmp_path / "align.html").as_uri())
    page.locator("table.align td").nth(4).hover()  # row 1 ("dog"), column 1 ("hund")
    assert page.locator(".value").text_content() == 'α("dog" ← "hund") = 0.800'
    assert sorted(h.text_content() for h in page.locator("th.hl").all()) == ["dog", "hund"]
