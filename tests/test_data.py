"""Caption data: Karpathy JSON, COCO via pycocotools, vocabulary, the feature cache (resume, workers)."""
import hashlib
import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import shared_path
from showattend.captioning.cache import FeatureStore, changed_images, file_digests, image_stats
from showattend.captioning.cache_build import build_feature_cache, check_disk
from showattend.captioning.data import (CaptionDataset, CaptionRecord, collate_captions, load_coco, load_karpathy,
                                        tokenize)
from showattend.captioning.encoders import Encoder
from showattend.captioning.images import ImageError
from showattend.captioning.vocab import Vocab


def test_flickr8k_karpathy_json_loads():
    records = load_karpathy(shared_path("flickr8k", "dataset_flickr8k.json"))
    splits = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    assert splits == {"train": 6000, "val": 1000, "test": 1000}
    assert all(len(r.tokens) == 5 and len(r.raw) == 5 for r in records)
    r = records[0]
    assert r.tokens[0] == tokenize(r.raw[0])
    assert os.path.exists(os.path.join(shared_path("flickr8k", "images"), r.key))


def test_coco_annotations_load_with_pycocotools():
    records = load_coco(shared_path("coco", "annotations", "captions_val2017.json"), "val2017")
    assert len(records) == 5000
    assert sum(len(r.raw) for r in records) == 25014
    assert all(r.key.startswith("val2017/") and r.split == "val" for r in records)
    assert records[0].tokens[0] == tokenize(records[0].raw[0])


def test_coco_with_karpathy_split(tmp_path):
    ann = shared_path("coco", "annotations", "captions_val2017.json")
    ids = [int(r.image_id) for r in load_coco(ann)][:3]
    split_file = tmp_path / "dataset_coco.json"
    split_file.write_text(json.dumps({"images": [{"cocoid": ids[0], "split": "test"},
                                                 {"cocoid": ids[1], "split": "restval"}]}))
    records = load_coco(ann, karpathy_json=str(split_file))
    assert [(int(r.image_id), r.split) for r in records] == [(ids[0], "test"), (ids[1], "train")]


def test_bad_caption_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_karpathy(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_karpathy(str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text('{"foo": 1}')
    with pytest.raises(ValueError, match="not a Karpathy"):
        load_karpathy(str(tmp_path / "other.json"))


def test_vocabulary_counts_and_specials():
    sents = [["a", "dog"], ["a", "cat"], ["a", "dog", "runs"]]
    v = Vocab.build(sents, min_count=2)
    assert v.itos == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog"]
    assert v.encode(["a", "cat"]) == [1, 4, 3, 2]
    assert v.decode([4, 5, 2, 4]) == ["a", "dog"]
    assert Vocab(v.to_list()).itos == v.itos
    with pytest.raises(ValueError):
        Vocab(["a", "b"])


def test_collate_sorts_and_pads():
    batch = [(torch.zeros(2, 3), torch.tensor([1, 5, 2])), (torch.ones(2, 3), torch.tensor([1, 5, 6, 7, 2]))]
    feats, caps, lengths = collate_captions(batch)
    assert lengths.tolist() == [5, 3]
    assert caps.tolist() == [[1, 5, 6, 7, 2], [1, 5, 2, 0, 0]]
    assert torch.equal(feats[0], torch.ones(2, 3))


def _images(folder, n=6):
    rng = np.random.default_rng(0)
    keys = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / f"im{i}.jpg")
        keys.append(f"im{i}.jpg")
    return keys


def _build_stopped_by_a_bad_image(tmp_path, cache, **kw):
    """6 images, the 5th unreadable: the build stops there (rows 0-3 written); the image is then repaired."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    keys = _images(imgs)
    good = (imgs / "im4.jpg").read_bytes()
    (imgs / "im4.jpg").write_bytes(b"broken")
    enc = Encoder("efficientnet_lite0")
    with pytest.raises(ImageError, match="im4.jpg"):
        build_feature_cache(enc, str(imgs), keys, str(tmp_path / cache), batch_size=2, num_workers=0,
                            progress=False, **kw)
    (imgs / "im4.jpg").write_bytes(good)
    return imgs, keys, enc


def test_feature_cache_resumes_after_a_bad_image_and_matches_a_fresh_build(tmp_path):
    imgs, keys, enc = _build_stopped_by_a_bad_image(tmp_path, "cache")
    progress = json.loads((tmp_path / "cache" / "progress.json").read_text())
    assert progress["done"] == 4 and not (tmp_path / "cache" / "features.npy").exists()
    store = build_feature_cache(enc, str(imgs), keys, str(tmp_path / "cache"), batch_size=2, num_workers=0,
                                progress=False)
    fresh = build_feature_cache(enc, str(imgs), keys, str(tmp_path / "fresh"), batch_size=3, num_workers=0,
                                progress=False)
    assert store.array.shape == (6, 49, 1280) and store.array.dtype == np.float16
    assert np.allclose(store.array, fresh.array, atol=2e-2)
    assert sorted(os.listdir(tmp_path / "cache")) == ["features.npy", "index.json"]
    # reuse: a second call with the same keys returns the cache without encoding again
    mtime = os.path.getmtime(tmp_path / "cache" / "features.npy")
    again = build_feature_cache(enc, str(imgs), keys, str(tmp_path / "cache"), progress=False)
    assert again.folder == str(tmp_path / "cache") and os.path.getmtime(again.folder + "/features.npy") == mtime


def test_feature_store_works_with_several_workers(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    keys = _images(imgs, 4)
    store = build_feature_cache(Encoder("efficientnet_lite0"), str(imgs), keys, str(tmp_path / "c"),
                                num_workers=0, progress=False)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "x"])
    records = [CaptionRecord(k, "train", [["x"], ["x", "x"]]) for k in keys]
    ds = CaptionDataset(records, FeatureStore(str(tmp_path / "c")), vocab)
    assert len(ds) == 8
    loaded = list(DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_captions))
    feats = loaded[0][0]
    direct = torch.stack([store.read(store.row[k]) for k in keys])
    assert all(any(torch.equal(f, d) for d in direct) for f in feats)


def test_caption_dataset_gives_each_caption_with_its_image_row(tmp_path):
    """The captions are stored end to end in numpy arrays: every item must still be its own caption (<start> and
    <end> added) with its own image's features; captions longer than max_len words are dropped and counted (cut,
    they ended with <end> after a fragment)."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    keys = _images(imgs, 3)
    store = build_feature_cache(Encoder("efficientnet_lite0"), str(imgs), keys, str(tmp_path / "c"),
                                num_workers=0, progress=False)
    vocab = Vocab(["<pad>", "<start>", "<end>", "<unk>", "a", "b", "c"])
    records = [CaptionRecord(keys[2], "train", [["a", "b", "c", "a"], [], ["zz"], ["a", "b", "c"]]),
               CaptionRecord(keys[0], "train", [["c"]])]
    ds = CaptionDataset(records, store, vocab, max_len=3, half=True)
    expected = [(keys[2], [1, 3, 2]), (keys[2], [1, 4, 5, 6, 2]), (keys[0], [1, 6, 2])]  # the empty one dropped
    assert len(ds) == len(expected) and ds.too_long == 1
    for i, (key, ids) in enumerate(expected):
        feats, caption, row = ds[i]
        assert caption.tolist() == ids and caption.dtype == torch.long and ds.length(i) == len(ids)
        assert feats.dtype == torch.float16 and torch.equal(feats, store.read(store.row[key], half=True)) and row == store.row[key]


def test_the_cache_states_its_size_and_refuses_a_disk_too_small(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        assert check_disk(str(tmp_path), (1000, 49, 1280)) == 1000 * 49 * 1280 * 2
    assert "1,000 images x 49 x 1280 float16 = 0.13 GB" in caplog.text
    with pytest.raises(OSError, match=r"needs \d+\.\d+ GB more in .*choose another --cache-dir"):
        check_disk(str(tmp_path), (10 ** 9, 49, 1280))  # 125 TB


def test_missing_cache_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete feature cache"):
        FeatureStore(str(tmp_path))


def _prepare(tmp_path, images, keys, image_size=64, **model):
    from showattend.captioning.config import ModelConfig
    from showattend.captioning.train import TrainConfig, prepare_cache

    cfg = TrainConfig(data=str(tmp_path / "dataset_toy.json"), images=str(images), cache_dir=str(tmp_path / "cache"),
                      progress=False)
    records = [CaptionRecord(k, "train", [["x"]]) for k in keys]
    return prepare_cache(cfg, ModelConfig(image_size=image_size, **model), records)


def test_a_cache_is_reused_only_for_the_same_images_encoder_weights_and_size(tmp_path, caplog):
    """The cache is keyed by the encoder's weights, the size and the image files (sizes and times): another image
    folder under the same JSON, other weights or another size build their own cache; a cache of more images
    serves a subset; an image changed since the build makes the cache be encoded again."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    keys = _images(a, 4)
    for i, k in enumerate(keys):  # the same names, other pictures
        Image.fromarray(np.full((50, 70, 3), 40 * i, dtype=np.uint8)).save(b / k)
    first = _prepare(tmp_path, a, keys)
    mtime = os.path.getmtime(os.path.join(first.folder, "features.npy"))
    assert _prepare(tmp_path, a, keys).folder == first.folder  # reused, not encoded again
    assert _prepare(tmp_path, a, keys[:2]).folder == first.folder  # a subset (evaluate on one split)
    assert os.path.getmtime(os.path.join(first.folder, "features.npy")) == mtime
    other_folder = _prepare(tmp_path, b, keys)
    assert other_folder.folder != first.folder
    assert not np.allclose(np.asarray(first.array, np.float32), np.asarray(other_folder.array, np.float32))
    torch.save({k: v + 0.01 for k, v in Encoder("efficientnet_lite0").net.state_dict().items()},
               tmp_path / "w.pth")
    other_weights = _prepare(tmp_path, a, keys, encoder_weights=str(tmp_path / "w.pth"))
    other_size = _prepare(tmp_path, a, keys, image_size=96)
    assert len({first.folder, other_folder.folder, other_weights.folder, other_size.folder}) == 4
    assert other_size.array.shape[1] == 9 and first.array.shape[1] == 4  # 3x3 and 2x2 grids
    assert first.meta["encoder_fingerprint"] != other_weights.meta["encoder_fingerprint"]
    # an image of the cache changed (other pixels, so another size or time): the cache is encoded again
    before = first.read(first.row[keys[0]])
    Image.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(a / keys[0])
    os.utime(a / keys[0], ns=(1, 1))
    again = _prepare(tmp_path, a, keys)
    assert again.folder == first.folder and "1 images changed since the cache was built" in caplog.text  # a warning
    assert not torch.allclose(before, again.read(again.row[keys[0]]))
    assert again.meta["stats"][0][1] == 1


def test_a_cache_serves_files_whose_times_changed_but_not_their_bytes(tmp_path, caplog):
    """A dataset copied or provisioned again (same bytes, new modification times) keeps its cache: the files are
    hashed, the cache records their new times, and nothing is encoded again. A file of the same size but other
    bytes is an image changed: the cache is encoded again. A cache without digests (older showattend) gains
    them when its files are unchanged."""
    caplog.set_level(logging.INFO)
    a = tmp_path / "a"
    a.mkdir()
    keys = _images(a, 4)
    Image.open(a / keys[0]).save(a / keys[0], comment=b"aaaa")  # a JPEG comment: bytes that are not pixels
    first = _prepare(tmp_path, a, keys)
    index, features = os.path.join(first.folder, "index.json"), os.path.join(first.folder, "features.npy")
    encoded_at = os.stat(features).st_mtime_ns
    assert len(first.meta["digests"]) == 4
    for k in keys:
        os.utime(a / k, ns=(10 ** 18, 10 ** 18))
    again = _prepare(tmp_path, a, keys)
    assert again.folder == first.folder and os.stat(features).st_mtime_ns == encoded_at
    assert "4 images have new modification times since the cache was built" in caplog.text
    assert json.loads(open(index).read())["stats"] == image_stats(str(a), keys)  # not hashed at the next start
    caplog.clear()
    _prepare(tmp_path, a, keys)
    assert "new modification times" not in caplog.text
    data = (a / keys[0]).read_bytes()
    (a / keys[0]).write_bytes(data.replace(b"aaaa", b"bbbb"))  # the same size, other bytes
    _prepare(tmp_path, a, keys)
    assert "1 images changed since the cache was built" in caplog.text and os.stat(features).st_mtime_ns != encoded_at
    meta = json.loads(open(index).read())
    del meta["digests"]
    open(index, "w").write(json.dumps(meta))
    assert "digests" in _prepare(tmp_path, a, keys).meta and "digests" in json.loads(open(index).read())


def test_build_feature_cache_keeps_a_retimed_cache_and_saves_its_times(tmp_path):
    """build_feature_cache called again on files with new times and the same bytes returns the cache as it is
    and records the times; a cache without digests (an older showattend) is encoded again when its files' times
    changed."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    keys, enc, out = _images(imgs, 3), Encoder("efficientnet_lite0"), str(tmp_path / "c")

    def build():
        return build_feature_cache(enc, str(imgs), keys, out, num_workers=0, progress=False, image_size=64)

    build()
    index, feats = os.path.join(out, "index.json"), os.path.join(out, "features.npy")
    encoded_at = os.stat(feats).st_mtime_ns
    for k in keys:
        os.utime(imgs / k, ns=(10 ** 18, 10 ** 18))
    build()
    assert os.stat(feats).st_mtime_ns == encoded_at
    meta = json.loads(open(index).read())
    assert meta["stats"] == image_stats(str(imgs), keys)
    del meta["digests"]
    open(index, "w").write(json.dumps(meta))
    for k in keys:
        os.utime(imgs / k, ns=(2 * 10 ** 18, 2 * 10 ** 18))
    assert "digests" in build().meta and os.stat(feats).st_mtime_ns != encoded_at


def test_a_retimed_cache_on_a_read_only_disk_still_serves(tmp_path, monkeypatch, caplog):
    from showattend.captioning import cache

    a = tmp_path / "a"
    a.mkdir()
    keys = _images(a, 2)
    first = _prepare(tmp_path, a, keys)
    for k in keys:
        os.utime(a / k, ns=(10 ** 18, 10 ** 18))

    def read_only(path, text):
        raise PermissionError(13, "Read-only file system", path)

    monkeypatch.setattr(cache, "atomic_write_text", read_only)
    assert _prepare(tmp_path, a, keys).folder == first.folder
    assert "could not record the images' new times" in caplog.text


def test_file_digests_hash_whole_files(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # the last byte of 3 MB differs
    a, b = file_digests(str(tmp_path), ["a", "b"])
    assert a == hashlib.blake2b(data, digest_size=16).hexdigest() and a != b


def test_changed_images_hashes_only_files_of_the_same_size(tmp_path, monkeypatch):
    """A file of another size is changed without being read; one with a new time is hashed; when an image
    changed, the times in the cache's meta are left as they were."""
    from showattend.captioning import cache

    (tmp_path / "a").write_bytes(b"aaaa")
    (tmp_path / "b").write_bytes(b"bbbb")
    keys = ["a", "b"]
    old = image_stats(str(tmp_path), keys)
    meta = {"keys": keys, "stats": [list(st) for st in old], "digests": file_digests(str(tmp_path), keys)}
    os.utime(tmp_path / "a", ns=(10 ** 18, 10 ** 18))
    (tmp_path / "b").write_bytes(b"bbbbb")
    hashed, real = [], cache.file_digests
    monkeypatch.setattr(cache, "file_digests", lambda folder, ks: hashed.extend(ks) or real(folder, ks))
    assert changed_images(meta, str(tmp_path), keys, image_stats(str(tmp_path), keys)) == ["b"]
    assert hashed == ["a"] and meta["stats"] == [list(st) for st in old]


def test_progress_is_checked_against_the_rows_written(tmp_path):
    """A progress file that counts rows never written (hand-edited, or from a crash between writes) does not
    leave all-zero feature rows: the zero rows are encoded again."""
    from showattend.captioning.cache import _stats_hash, image_stats

    imgs, keys, enc = _build_stopped_by_a_bad_image(tmp_path, "c", image_size=64)
    progress = json.loads((tmp_path / "c" / "progress.json").read_text())
    assert progress["done"] == 4
    stats = image_stats(str(imgs), keys)
    (tmp_path / "c" / "progress.json").write_text(json.dumps({**progress, "done": 6,
                                                              "stats": _stats_hash(stats[:6])}))
    store = build_feature_cache(enc, str(imgs), keys, str(tmp_path / "c"), batch_size=2, num_workers=0,
                                progress=False, image_size=64)
    rows = np.asarray(store.array, dtype=np.float32).reshape(len(keys), -1)
    assert np.abs(rows).max(axis=1).min() > 0  # no all-zero row
    fresh = build_feature_cache(enc, str(imgs), keys, str(tmp_path / "fresh"), num_workers=0, progress=False,
                                image_size=64)
    np.testing.assert_allclose(rows, np.asarray(fresh.array, np.float32).reshape(len(keys), -1), atol=2e-2)


def test_missing_images_are_named_before_anything_is_encoded(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    keys = _images(imgs, 2) + ["gone1.jpg", "sub/gone2.jpg"]
    with pytest.raises(ImageError, match=r"2 of 4 images are missing under .*imgs: gone1.jpg, sub/gone2.jpg"):
        _prepare(tmp_path, imgs, keys)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def _coco_miniature(root):
    """The official format in miniature: captions_train2014.json (4 images) and captions_val2014.json (6), their
    images under images/train2014 and images/val2014, and a Karpathy split file drawing train from both files
    (restval), val and test from val2014, and leaving one val2014 image out."""
    splits = {1: "train", 2: "train", 3: "train", 4: "train", 11: "restval", 12: "restval", 13: "val", 14: "val",
              15: "test", 16: "test"}
    words = ["a red square", "a green box", "a blue square on white", "a big red box"]
    (root / "annotations").mkdir(parents=True)
    for split, ids in (("train2014", [1, 2, 3, 4]), ("val2014", [11, 12, 13, 14, 15, 16, 17])):
        (root / "images" / split).mkdir(parents=True)
        images, anns = [], []
        for i in ids:
            name = f"COCO_{split}_{i:012d}.jpg"
            Image.fromarray(np.full((40, 50, 3), 20 * (i % 12), np.uint8)).save(root / "images" / split / name)
            images.append({"id": i, "file_name": name, "width": 50, "height": 40})
            anns += [{"id": 100 * i + k, "image_id": i, "caption": words[(i + k) % 4]} for k in range(2)]
        (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "info": {}, "licenses": []}))
    (root / "dataset_coco.json").write_text(json.dumps({"images": [
        {"cocoid": i, "split": s, "filepath": "train2014" if i < 10 else "val2014", "filename": "x",
         "sentences": []} for i, s in splits.items()]}))
    return root


def test_coco_from_the_official_annotation_files_with_the_karpathy_split(tmp_path):
    """Two annotation files, each with its image folder under --images, and a split file that takes train images
    from both (restval) and val/test from val2014: every assigned image is kept, the unassigned one dropped."""
    from showattend.captioning.train import TrainConfig, load_records

    root = _coco_miniature(tmp_path)
    cfg = TrainConfig(data=[str(root / "annotations" / "captions_train2014.json"),
                            str(root / "annotations" / "captions_val2014.json")],
                      images=str(root / "images"), karpathy_split=str(root / "dataset_coco.json"))
    records = load_records(cfg)
    by_split = {s: sorted(r.image_id for r in records if r.split == s) for s in ("train", "val", "test")}
    assert by_split == {"train": ["1", "11", "12", "2", "3", "4"], "val": ["13", "14"], "test": ["15", "16"]}
    assert all(os.path.isfile(root / "images" / r.key) for r in records)
    assert {r.key.split("/")[0] for r in records} == {"train2014", "val2014"}
    assert all(len(r.raw) == 2 for r in records)


@pytest.mark.slow
def test_training_and_evaluating_on_the_official_coco_files(tmp_path, capsys):
    """`showattend train --data captions_train2014.json captions_val2014.json --karpathy-split dataset_coco.json`
    trains (the route that used to stop with "needs train and val images, found N and 0"), and evaluate scores
    the test split of the same files."""
    from showattend.cli import main

    root = _coco_miniature(tmp_path)
    data = ["--data", str(root / "annotations" / "captions_train2014.json"),
            str(root / "annotations" / "captions_val2014.json"), "--karpathy-split", str(root / "dataset_coco.json"),
            "--images", str(root / "images"), "--cache-dir", str(root / "cache"), "--device", "cpu"]
    assert main(["train", *data, "--out-dir", str(root / "run"), "--min-count", "1", "--batch-size", "4",
                 "--epochs", "1", "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8",
                 "--val-beam-size", "1", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "train: 6 images, 12 captions; val: 2 images" in err
    assert main(["evaluate", *data, "--checkpoint", str(root / "run" / "best.pt"), "--split", "test",
                 "--beam-size", "1", "--metrics", "bleu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 2 and report["references_per_image"] == 2 and len(report["data"]) == 2
    cache, = (root / "cache").iterdir()  # one cache, keyed by the image list, reused by evaluate
    assert cache.name.startswith("captions_train2014+captions_val2014-efficientnet_lite0-224-")


def _coco_file(path, ids):
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.jpg"} for i in ids],
                                "annotations": [{"id": 10 * i + j, "image_id": i, "caption": f"A dog number {i}."}
                                                for i in ids for j in range(2)]}))
    return str(path)


def test_official_coco_files_keep_their_own_split(tmp_path):
    """Without --karpathy-split, captions_train2014.json's images are "train" and captions_val2014.json's "val"
    (every image was "val" before, so `evaluate --split val` scored the training images too); a file whose name
    does not say its split is refused."""
    from showattend.captioning.data import coco_file_split
    from showattend.captioning.train import TrainConfig, load_records

    train = _coco_file(tmp_path / "captions_train2014.json", [1, 2, 3])
    val = _coco_file(tmp_path / "captions_val2014.json", [7, 8])
    records = load_records(TrainConfig(data=(train, val), images=str(tmp_path)))
    assert [(r.image_id, r.split) for r in records] == [("1", "train"), ("2", "train"), ("3", "train"),
                                                         ("7", "val"), ("8", "val")]
    assert [coco_file_split(p) for p in ("captions_val2017.json", "a/captions_test2015.json", "captions.json")] == \
        ["val", "test", None]
    other = _coco_file(tmp_path / "my_annotations.json", [4])
    with pytest.raises(ValueError, match="my_annotations.json: its name does not say which split"):
        load_records(TrainConfig(data=(other,), images=str(tmp_path)))
    assert [r.split for r in load_coco(other, split="train")] == ["train"]
