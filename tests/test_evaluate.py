"""Evaluation that cannot mix up images or references: images keyed by their path (ids collide across Karpathy
files), captions made one line each before the line-based PTB tokenizer, and its output checked for shifts."""
import json

import pytest
import torch

from conftest import write_toy_images
from showattend.captioning.evaluate import evaluate
from showattend.captioning.captioner import Captioner
from showattend.captioning.config import DataConfig, ModelConfig
from showattend.captioning.network import build_decoder
from showattend.captioning.metrics import _ptb_tokenize, caption_metrics, java_available
from showattend.captioning.vocab import Vocab

needs_java = pytest.mark.skipif(not java_available(), reason="no java: the PTB tokenizer cannot run")


def test_images_with_the_same_id_in_two_files_are_all_scored(tmp_path):
    """Two Karpathy JSONs that each number their images from 0: four images decoded, four scored (two were
    silently overwritten when hypotheses and references were keyed by image id)."""
    root = write_toy_images(tmp_path / "toy", n=4, splits=(0, 0))  # every image "test"
    toy = json.loads((root / "dataset_toy.json").read_text())["images"]
    for name, part in (("a.json", toy[:2]), ("b.json", toy[2:])):
        (root / name).write_text(json.dumps({"images": [{**img, "imgid": i} for i, img in enumerate(part)]}))
    torch.manual_seed(0)
    vocab = Vocab.build([t for img in toy for s in img["sentences"] for t in s["tokens"]], 1)
    cfg = ModelConfig(embed_dim=8, hidden_dim=8, attention_dim=4, image_size=64)
    Captioner(build_decoder(cfg, len(vocab)), vocab, cfg, device="cpu").save(str(tmp_path / "model.pt"))
    dataset = DataConfig(data=(str(root / "a.json"), str(root / "b.json")), images=str(root / "images"),
                         cache_dir=str(tmp_path / "cache"))
    report = evaluate(str(tmp_path / "model.pt"), dataset, split="test", beam_size=1, max_len=5, device="cpu",
                      metrics=("bleu", "cider"), captions_out=str(tmp_path / "captions.json"))
    assert report["images"] == report["images_scored"] == 4
    assert sorted(c["image"] for c in json.loads((tmp_path / "captions.json").read_text())) == \
        ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


@needs_java
@pytest.mark.parametrize("brk", ["\r", "\u2028", "\r\n", "\n"])
def test_a_line_break_inside_a_reference_moves_no_other_images_references(brk):
    """Image "b" is captioned exactly as its references say, after an image whose reference holds a line break:
    its BLEU-4 stays 100 (the break once shifted every later reference by a line)."""
    refs = {"a": [f"a dog runs{brk}on the grass", "a brown dog runs on grass"],
            "b": ["two children play in the snow", "two kids play in snow"]}
    hyps = {"a": "a dog runs on the grass", "b": "two children play in the snow"}
    per_image = {}
    caption_metrics(refs, hyps, ("bleu",), per_image=per_image)
    assert per_image["b"]["BLEU-4"] == 100.0 and per_image["a"]["BLEU-4"] == 100.0


@needs_java
def test_the_tokenizers_lines_are_checked():
    """Unnormalised, a carriage return splits a caption in two; the wrapper notices instead of shifting."""
    with pytest.raises(RuntimeError, match="shifted"):
        _ptb_tokenize({"a": ["one\rtwo"], "b": ["three"]})
    assert _ptb_tokenize({"a": ["One, two."], "b": ["three"]}) == {"a": ["one two"], "b": ["three"]}
