"""Fine-tuning the encoder's top blocks (--fine-tune-blocks N): trains, saves, reloads, evaluates."""
import json

import pytest
import torch

from conftest import write_toy_images
from showattend.captioning.encoders import Encoder
from showattend.captioning.captioner import Captioner
from showattend.cli import main


@pytest.mark.parametrize("n", [1, 2])
def test_trunk_then_top_is_the_whole_encoder(n):
    """The cache holds trunk(x); training runs top() on it: together they must be the encoder's forward."""
    torch.manual_seed(0)
    frozen, tuned = Encoder(), Encoder(fine_tune_blocks=n)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(frozen.trunk(x, folded=False), tuned.top(tuned.trunk(x, folded=False)))  # the modules
        whole, split = frozen(x), tuned.top(tuned.trunk(x))  # folded trunks of different lengths: fp32 rounding
        assert (whole - split).abs().max() <= 1e-4 * whole.abs().max()
    assert tuned.trunk(x).shape[1:] == ((9, 320) if n == 1 else (9, 192))  # the input of the head / block 15
    assert frozen.fingerprint() != tuned.fingerprint() != Encoder(fine_tune_blocks=3 - n).fingerprint()


def test_fine_tuned_blocks_train_the_rest_stays_and_the_checkpoint_reloads(tmp_path, capsys):
    data = write_toy_images(tmp_path / "toy")
    common = ["--data", str(data / "dataset_toy.json"), "--images", str(data / "images"),
              "--cache-dir", str(tmp_path / "cache")]
    run = tmp_path / "run"
    args = ["train", *common, "--out-dir", str(run), "--min-count", "1", "--batch-size", "8", "--embed-dim", "16",
            "--hidden-dim", "16", "--attention-dim", "8", "--fine-tune-blocks", "2", "--encoder-lr", "1e-2",
            "--val-beam-size", "1", "--no-progress", "--device", "cpu", "--image-size", "64"]
    assert main(args + ["--epochs", "2"]) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    pretrained = Encoder(fine_tune_blocks=2)
    # the checkpoint carries exactly the top two blocks (block 15 and the head), and they changed
    assert set(ckpt["encoder"]) == set(pretrained.top_state_dict())
    assert all(k.startswith(("_blocks.15.", "_conv_head.", "_bn1.")) for k in ckpt["encoder"])
    changed = [k for k, v in pretrained.top_state_dict().items()
               if v.is_floating_point() and not torch.equal(v, ckpt["encoder"][k])]
    assert any(k.startswith("_blocks.15.") for k in changed) and any(k.startswith("_conv_head.") for k in changed)
    # batch norm keeps its ImageNet statistics
    assert torch.equal(ckpt["encoder"]["_bn1.running_mean"], pretrained.top_state_dict()["_bn1.running_mean"])
    # two parameter groups, the decoder's (--lr 4e-4) and the encoder's (--encoder-lr 1e-2), halved together
    decoder_lr, encoder_lr = [g["lr"] for g in ckpt["optimizer"]["param_groups"]]
    assert encoder_lr / decoder_lr == pytest.approx(1e-2 / 4e-4) and decoder_lr <= 4e-4

    cap = Captioner.from_checkpoint(str(run / "best.pt"), device="cpu")
    frozen_before = {k: v for k, v in Encoder().net.state_dict().items() if k not in ckpt["encoder"]}
    assert all(torch.equal(cap.encoder.net.state_dict()[k], v) for k, v in frozen_before.items())  # frozen: unchanged
    image = str(data / "images" / "0.jpg")
    first = cap.caption([image], beam_size=2)[0]
    again = Captioner.from_checkpoint(str(run / "best.pt"), device="cpu").caption([image], beam_size=2)[0]
    assert first.words == again.words and first.log_prob == pytest.approx(again.log_prob, abs=1e-5)
    # the same caption from the training cache (trunk activations, then the fine-tuned top) as from the image
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), *common, "--split", "train", "--beam-size", "2",
                 "--device", "cpu", "--metrics", "bleu", "--captions-out", str(tmp_path / "caps.json")]) == 0
    from_cache = {c["image"]: c["caption"] for c in json.loads((tmp_path / "caps.json").read_text())}
    assert from_cache["0.jpg"] == first.text
    # resume continues with both parts restored
    assert main(args + ["--epochs", "3", "--resume"]) == 0
    rows = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_training_from_the_images_matches_training_from_the_cache(tmp_path):
    """--from-images decodes the images in every step and runs the whole encoder instead of reading the cache; the
    first steps' losses agree with the cached run (which differs only by the cache's float16 rounding), and no
    cache is written."""
    data = write_toy_images(tmp_path / "toy")
    rows = {}
    for name, extra in (("cache", []), ("images", ["--from-images", "--num-workers", "1"])):
        run = tmp_path / name
        assert main(["train", "--data", str(data / "dataset_toy.json"), "--images", str(data / "images"),
                     "--cache-dir", str(tmp_path / f"cache-{name}"), "--out-dir", str(run), "--min-count", "1",
                     "--batch-size", "4", "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8",
                     "--fine-tune-blocks", "1", "--epochs", "2", "--val-beam-size", "1", "--no-progress",
                     "--device", "cpu", "--image-size", "64", *extra]) == 0
        rows[name] = [json.loads(x) for x in open(run / "metrics.jsonl")]
    assert not (tmp_path / "cache-images").exists() and (tmp_path / "cache-cache").exists()
    for a, b in zip(rows["cache"], rows["images"]):
        assert a["train_ce"] == pytest.approx(b["train_ce"], abs=2e-3)
    assert Captioner.from_checkpoint(str(tmp_path / "images" / "best.pt"), device="cpu").config.fine_tune_blocks == 1


def _top_grads(encoder, trunk, weights):
    """Gradients of the top blocks' parameters for the loss Σ_b weights[b] · <top(trunk)_b, R>."""
    encoder.zero_grad()
    out = encoder.top(trunk)
    r = torch.linspace(-1, 1, out[0].numel()).view_as(out[0])
    (out * r * weights.view(-1, 1, 1)).sum().backward()
    return {k: p.grad.clone() for k, p in encoder.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("encoder", ["efficientnet_lite0", "efficientnet_lite2"])
def test_top_block_gradients_are_right_for_one_image_and_for_several(encoder):
    """The top blocks' gradients for one image equal that image's share of a two-image batch (a batch of 2 is
    computed right), and a global batch of two images on one process equals the sum over two processes of one
    image each. CPU batch norm once got the one-image case wrong from a transposed view's gradient."""
    torch.manual_seed(0)
    tuned = Encoder(encoder, fine_tune_blocks=2).train()
    with torch.no_grad():
        trunk = tuned.trunk(torch.rand(2, 3, 96, 96))
    pair = _top_grads(tuned, trunk, torch.tensor([1.0, 0.0]))  # image 0's share, in a batch of two
    alone = _top_grads(tuned, trunk[:1], torch.tensor([1.0]))  # image 0 alone (a shard of one image)
    other = _top_grads(tuned, trunk[1:], torch.tensor([1.0]))
    both = _top_grads(tuned, trunk, torch.tensor([1.0, 1.0]))
    for k in pair:
        scale = pair[k].norm() + 1e-12
        assert (alone[k] - pair[k]).norm() / scale < 1e-4, k
        assert (alone[k] + other[k] - both[k]).norm() / (both[k].norm() + 1e-12) < 1e-4, k


def test_from_images_decodes_each_image_once_per_batch(tmp_path, monkeypatch):
    """An image comes with several captions; --from-images decodes its JPEG once per batch that holds it, not
    once per caption. Toy: 6 training images with 2 captions each, batches of 4 captions (2 whole images), and
    2 validation images: one epoch decodes 6 + 2 images (it decoded 12 + 2 before)."""
    from showattend.captioning.cache import ImageStore

    reads = []
    real = ImageStore.read
    monkeypatch.setattr(ImageStore, "read", lambda self, row, half=False: reads.append(row) or real(self, row, half))
    data = write_toy_images(tmp_path / "toy")
    assert main(["train", "--data", str(data / "dataset_toy.json"), "--images", str(data / "images"),
                 "--out-dir", str(tmp_path / "run"), "--min-count", "1", "--batch-size", "4", "--embed-dim", "16",
                 "--hidden-dim", "16", "--attention-dim", "8", "--epochs", "1", "--val-beam-size", "1",
                 "--no-progress", "--device", "cpu", "--image-size", "64", "--from-images"]) == 0
    assert sorted(reads) == sorted(list(range(6)) + [6, 7])
