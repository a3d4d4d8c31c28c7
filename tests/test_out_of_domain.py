"""The out-of-domain photos (``scripts/out_of_domain.py``, ``assets/out_of_domain/references.json``): the set is
well formed, and the bundled captioner's figures and captions on its model card are what the script gives."""
import json
import os
import sys

import pytest

from conftest import ROOT
from showattend.captioning.metrics import java_available

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import out_of_domain  # noqa: E402

CARDS = os.path.join(ROOT, "showattend", "weights")


def test_the_set_has_each_photo_once_with_three_references_and_other_subjects_than_flickr8ks():
    photos = out_of_domain.load_set()
    assert len(photos) == 9 and len({f for f, _, _ in photos}) == 9
    for _, _, refs in photos:
        assert len(refs) == 3 and all(r == r.lower().strip() and len(r.split()) >= 5 for r in refs), refs
    kinds = " ".join(k for _, k, _ in photos)
    assert all(word in kinds for word in ("animal", "food", "vehicle", "indoor", "plant", "building"))


def test_a_missing_photo_is_named(tmp_path):
    bad = {"photos": [{"file": "assets/out_of_domain/none.jpg", "kind": "x", "references": ["a b c", "d", "e"]}]}
    (tmp_path / "refs.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="none.jpg is missing"):
        out_of_domain.load_set(str(tmp_path / "refs.json"))


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="no java: METEOR and the PTB tokenizer cannot run")
@pytest.mark.parametrize("name", ["flickr8k-lite2-soft", "flickr8k-lite2-hard"])
def test_the_model_cards_out_of_domain_figures_are_current(name):
    from showattend.captioning import Captioner

    report = out_of_domain.score(Captioner.from_pretrained(name, device="cpu"))  # its decoding defaults
    card = open(os.path.join(CARDS, f"{name}.md"), encoding="utf-8").read()
    table = card.split("<!-- out-of-domain: scripts/out_of_domain.py -->")[1].split("<!-- end of out-of-domain -->")[0]
    m = report["metrics"]
    assert table.strip().splitlines()[-1] == (f"| {m['BLEU-1']:.2f} | {m['BLEU-4']:.2f} | {m['METEOR']:.2f} | "
                                              f"{m['ROUGE-L']:.2f} | {m['CIDEr']:.2f} |")
    for file, caption in report["captions"].items():
        assert f"| `{os.path.basename(file)}` | {caption} |" in card
