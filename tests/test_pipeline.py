"""End to end on a tiny synthetic dataset: cache, train, resume, evaluate with the coco-caption scorers."""
import json
import shutil

import pytest
import torch

from showattend.captioning.captioner import Captioner
from showattend.cli import main
from showattend.captioning.metrics import caption_metrics

from conftest import write_toy_images

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_toy_images(tmp_path_factory.mktemp("toy"))


@pytest.mark.slow
def test_train_resume_evaluate(dataset, tmp_path, capsys):
    common = ["--data", str(dataset / "dataset_toy.json"), "--images", str(dataset / "images"),
              "--cache-dir", str(tmp_path / "cache")]
    args = ["train", *common, "--out-dir", str(tmp_path / "run"), "--min-count", "1", "--batch-size", "4",
            "--embed-dim", "32", "--hidden-dim", "32", "--attention-dim", "16", "--lr", "3e-3",
            "--patience", "100", "--val-beam-size", "1", "--no-progress", "--device", "cpu"]
    assert main(args + ["--epochs", "2"]) == 0
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    for name in ("best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "run" / name).exists()
    assert main(args + ["--epochs", "4", "--resume"]) == 0  # continues at epoch 3
    rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_ce"] < rows[0]["train_ce"]
    assert main(["export", str(tmp_path / "run" / "last.pt"), str(tmp_path / "small.pt"), "--half"]) == 0
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer" not in small and small["model"]["L_o.weight"].dtype == torch.float16
    assert small["epoch"] == 4
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "best.pt"), *common, "--split", "test",
                 "--beam-size", "2", "--device", "cpu", "--output", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == 1 and report["beam_size"] == 2 and "SPICE" in report
    assert set(report["metrics"]) >= {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"}


def test_missing_caption_file_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none.json"), "--images", str(tmp_path), "--out-dir",
                 str(tmp_path / "r")]) == 1
    assert "none.json" in capsys.readouterr().err


def test_coco_caption_scores_by_hand():
    refs = {"1": ["a dog runs on the grass", "a brown dog is running"], "2": ["a cat sleeps on a sofa"]}
    same = caption_metrics(refs, {"1": "a dog runs on the grass", "2": "a cat sleeps on a sofa"},
                           metrics=("bleu", "rouge"))
    assert same["BLEU-4"] == pytest.approx(100, abs=1e-3) and same["ROUGE-L"] == pytest.approx(100, abs=1e-3)
    # one 4-word hypothesis, no 4-gram match: BLEU-4 is ~0; unigram precision 3/4 with brevity penalty
    worse = caption_metrics({"1": ["a dog runs fast"]}, {"1": "a dog sleeps fast"}, metrics=("bleu",))
    assert worse["BLEU-1"] == pytest.approx(75, abs=1e-3)
    assert worse["BLEU-4"] < 1e-3


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_meteor_runs():
    s = caption_metrics({"1": ["a dog runs on the grass"]}, {"1": "a dog runs on the grass"}, metrics=("meteor",))
    assert s["METEOR"] > 90


@pytest.mark.slow
def test_hard_attention_model_trains_reloads_and_captions(dataset, tmp_path, capsys):
    common = ["--data", str(dataset / "dataset_toy.json"), "--images", str(dataset / "images"),
              "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", *common, "--attention", "hard", "--out-dir", str(tmp_path / "hard"), "--epochs", "2",
                 "--min-count", "1", "--batch-size", "4", "--embed-dim", "32", "--hidden-dim", "32",
                 "--attention-dim", "16", "--lr", "3e-3", "--val-beam-size", "1", "--no-progress",
                 "--device", "cpu", "--hard-samples", "2", "--expected-context-prob", "0.5",
                 "--ds-normalisation", "eq14"]) == 0
    ckpt = tmp_path / "hard" / "best.pt"
    last = __import__("torch").load(tmp_path / "hard" / "last.pt", weights_only=True)
    assert last["config"]["attention"] == "hard" and last["task_state"]["baseline"]["steps"] > 0
    assert last["train_config"]["ds_normalisation"] == "eq14"
    capsys.readouterr()
    image = str(dataset / "images" / "0.jpg")
    captioner = Captioner.from_checkpoint(str(ckpt), device="cpu")
    for mode in ("soft", "hard"):
        torch.manual_seed(1)  # hard attention's samples have a generator of their own (seed 0): not this one's
        assert main(["caption", image, "--checkpoint", str(ckpt), "--device", "cpu", "--attention", mode,
                     "--samples", "2", "--attention-dir", str(tmp_path / "ov")]) == 0
        out = capsys.readouterr().out
        torch.manual_seed(2)
        (want,) = captioner.caption([image], attention=mode, samples=2)
        assert out == want.text + "\n"  # the CLI prints what the API returns for the reloaded checkpoint
        assert set(want.words) <= set(captioner.vocab.itos[4:])
    assert (tmp_path / "ov" / "0_attention.png").exists()
