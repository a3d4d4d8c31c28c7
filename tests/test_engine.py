"""The training engine: DDP (2 gloo processes) equal to one process, exact resume
after SIGKILL, torch.compile equivalence; for captioning (soft and hard attention) and translation."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from showattend.captioning.cache import FeatureStore
from showattend.captioning.train import TrainConfig
from showattend.checkpoint import load_checkpoint
from showattend.engine import DistInfo, StepContext, Trainer

from conftest import write_toy_images
from counters import PKG

from toys import toy_caption_task, toy_translation_task, write_toy_parallel

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(PKG)}


# ----------------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes equal one process


def _cli(args, nproc=1, env=None, check=True):
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "showattend", *args]
    else:
        cmd = [sys.executable, "-m", "showattend", *args]
    p = subprocess.run(cmd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


@pytest.fixture(scope="module")
def toy_images(tmp_path_factory):
    return write_toy_images(tmp_path_factory.mktemp("toyimg"), n=10, splits=(8, 10), size=48)


def _caption_args(root, out, attention):
    return ["train", "--data", str(root / "dataset_toy.json"), "--images", str(root / "images"), "--cache-dir",
            str(root / "cache"), "--out-dir", str(out), "--min-count", "1", "--batch-size", "4", "--epochs", "2",
            "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8", "--lr", "3e-3", "--patience", "9",
            "--val-beam-size", "1", "--no-progress", "--device", "cpu", "--attention", attention,
            "--hard-samples", "2", "--log-every", "1"]


def _params(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["soft", "hard"])
def test_two_gloo_processes_train_like_one(toy_images, tmp_path, attention):
    """Global batch 4 over 2 processes (2 captions each), dropout off: after 2 epochs of 4 steps the weights
    equal those of one process with batch 4 (fp32). For hard attention this needs the shared coin, the same
    uniforms per caption in either process, and the all-reduced baseline."""
    args = _caption_args(toy_images, tmp_path / "one", attention) + ["--dropout", "0"]
    _cli(args)
    _cli(_caption_args(toy_images, tmp_path / "two", attention) + ["--dropout", "0"], nproc=2)
    one, two = _params(tmp_path / "one" / "last.pt"), _params(tmp_path / "two" / "last.pt")
    init = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["engine"]
    assert init["step"] == 8 and init["world"] == 1
    assert torch.load(tmp_path / "two" / "last.pt", weights_only=True)["engine"]["world"] == 2
    # nothing in a captioner trains a buffer: DDP does not re-send the frozen batch norms' statistics each step
    assert json.loads((tmp_path / "two" / "config.json").read_text())["resolved"]["ddp_broadcast_buffers"] is False
    # Summation order differs between one and two processes (fp32 rounding, ~1e-7 relative in the gradients);
    # Adam divides each gradient element by its own running RMS, so on elements with near-zero gradients such a
    # rounding difference can move a weight by a little more: 2e-6 at most was seen, against 8 steps of lr 3e-3.
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=0, atol=1e-5), (k, (one[k] - two[k]).abs().max())
    steps_one = [json.loads(x) for x in open(tmp_path / "one" / "steps.jsonl")]
    steps_two = [json.loads(x) for x in open(tmp_path / "two" / "steps.jsonl")]
    assert [r["step"] for r in steps_one] == list(range(1, 9))
    for a, b in zip(steps_one, steps_two):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_build_the_feature_cache_of_one(toy_images, tmp_path):
    """Under torchrun each process encodes its share of the images into the shared memory-mapped file."""
    common = ["--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
              "--device", "cpu"]
    _cli(["cache", *common, "--cache-dir", str(tmp_path / "one")])
    _cli(["cache", *common, "--cache-dir", str(tmp_path / "two")], nproc=2)
    one = FeatureStore(str(next((tmp_path / "one").glob("toy-efficientnet_lite0-224-*"))))
    two = FeatureStore(str(next((tmp_path / "two").glob("toy-efficientnet_lite0-224-*"))))
    assert one.meta == two.meta and len(one.meta["keys"]) == 10
    assert not [f for f in os.listdir(two.folder) if f.startswith("progress") or f.endswith(".partial")]
    a, b = np.asarray(one.array, dtype=np.float32), np.asarray(two.array, dtype=np.float32)
    assert np.abs(a).max() > 0.1
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)  # fp16 rounding


# ----------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize("app", ["soft", "hard", "translation"])
def test_kill_and_resume_gives_the_uninterrupted_run(toy_images, tmp_path, app):
    """Uninterrupted: 2 epochs of 4 steps. Interrupted: the process SIGKILLs itself after step 7 (the last
    checkpoint is step 6, inside epoch 2), then ``--resume``. Dropout is on, so the RNG streams must be restored;
    the per-step losses and final weights must be identical."""
    if app == "translation":
        data = tmp_path / "mt_data"
        write_toy_parallel(data)

        def args(out):
            return ["translate", "train", "--data", str(data), "--out-dir", str(out), "--vocab-size", "40",
                    "--embed-dim", "8", "--encoder-hidden", "8", "--decoder-hidden", "16", "--attention-dim", "8",
                    "--batch-size", "12", "--epochs", "2", "--patience", "9", "--no-progress", "--device", "cpu",
                    "--log-every", "1", "--save-every", "3"]
    else:
        def args(out):
            return _caption_args(toy_images, out, app) + ["--save-every", "3"]
    _cli(args(tmp_path / "a"))
    p = _cli(args(tmp_path / "b"), env={"SHOWATTEND_KILL_AT_STEP": "7"}, check=False)
    assert p.returncode == -signal.SIGKILL
    killed = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["engine"]
    assert (killed["step"], killed["epoch"], killed["pos"]) == (6, 2, 2)
    _cli(args(tmp_path / "b") + ["--resume"])
    rows_a = [json.loads(x) for x in open(tmp_path / "a" / "steps.jsonl")]
    rows_b = [json.loads(x) for x in open(tmp_path / "b" / "steps.jsonl")]
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == list(range(1, 9))
    assert [r["train_loss"] for r in rows_b] == [r["train_loss"] for r in rows_a]
    a, b = _params(tmp_path / "a" / "last.pt"), _params(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist_a = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    hist_b = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    key = "val_bleu" if app == "translation" else "val_bleu4"
    assert [(r["epoch"], r[key]) for r in hist_b] == [(r["epoch"], r[key]) for r in hist_a]
    assert loop_state(tmp_path / "b" / "last.pt") == loop_state(tmp_path / "a" / "last.pt")


def loop_state(path):
    """What the loop decided from its raw validation scores (metrics.jsonl rounds them to 2 decimals): the best
    score, the epochs without a new best, the scheduler's state and the optimizer's hyperparameters."""
    ckpt = torch.load(path, weights_only=True)
    return (ckpt["best_score"], ckpt["bad_epochs"], ckpt["scheduler"], ckpt["optimizer"]["param_groups"])


# ----------------------------------------------------------------------------------------------------------
# torch.compile


def _compiler_missing():
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return "no C++ compiler for TorchInductor's CPU backend"
    return None


def _loss_and_grads(task, batch, ctx):
    torch.manual_seed(0)  # hard attention's location samples
    task.model.zero_grad()
    loss, _ = task.loss(task.model, batch, ctx)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in task.model.parameters() if p.grad is not None]


@pytest.mark.slow
@pytest.mark.skipif(_compiler_missing() is not None, reason=str(_compiler_missing()))
@pytest.mark.parametrize("app", ["soft", "hard", "translation"])
def test_the_compiled_step_has_no_graph_breaks_and_gives_the_eager_loss_and_gradients(tmp_path, app):
    from torch._dynamo.utils import counters

    if app == "translation":
        task, cfg = toy_translation_task(tmp_path)
    else:  # hard: every batch samples locations (expected_context_prob 0)
        task, cfg = toy_caption_task(tmp_path, app, expected_context_prob=0.0)
    b = task.epoch_batches(1)[0]
    batch = task.collate([task.dataset[i] for i in b], list(range(len(b))))
    ctx = StepContext(0, sum(task.words(i) for i in b), len(b), 1)
    objective = getattr(task, "objective", task)
    baseline = copy.deepcopy(getattr(objective, "baseline", None))  # hard attention's b moves with each loss
    eager, eager_grads = _loss_and_grads(task, batch, ctx)
    if baseline is not None:
        objective.baseline = baseline
    torch._dynamo.reset()
    counters.clear()
    task.compile()
    compiled, grads = _loss_and_grads(task, batch, ctx)
    compiled_fn = task.model.decoder.step if app == "translation" else task.model.recurrence
    assert hasattr(compiled_fn, "_torchdynamo_orig_callable")  # really the compiled function
    assert dict(counters["graph_break"]) == {}  # one graph per step, no breaks
    assert counters["stats"]["unique_graphs"] >= 1
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(eager_grads) and all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(eager_grads, grads))


# ----------------------------------------------------------------------------------------------------------
# Settings are checked before any long work


@pytest.mark.parametrize("args, message", [
    (["train", "--score", "bogus"], "invalid choice 'bogus' for argument '--score'"),  # choices from Literal types
    (["train", "--precision", "fp16"], "invalid choice 'fp16' for argument '--precision'"),
    (["train", "--ds-normalisation", "sum"], "invalid choice 'sum' for argument '--ds-normalisation'"),
    (["translate", "train", "--decoder", "gru"], "invalid choice 'gru' for argument '--decoder'"),
    (["train", "--encoder", "resnet9"], "--encoder 'resnet9'"),  # checked by the settings themselves
    (["train", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--device", "tpu"], "--device 'tpu'"),
    (["translate", "train", "--save-every", "-1"], "--save-every must not be negative"),
    (["train", "--attention-dim", "-1"], "--attention-dim must be at least 1"),
    (["train", "--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["translate", "train", "--decoder-hidden", "0"], "--decoder-hidden must be at least 1"),
    (["train", "--length-buckets", "--fine-tune-blocks", "1"], "--length-buckets groups captions read from a"),
    (["train", "--length-buckets", "--from-images"], "--length-buckets groups captions read from a"),
])
def test_a_bad_setting_fails_before_the_data_is_read(tmp_path, capsys, args, message):
    from showattend.cli import main

    missing = str(tmp_path / "missing")  # were the data read first, the error would name this path
    try:
        images = [] if args[0] == "translate" else ["--images", missing]
        code = main([*args, "--data", missing, *images, "--out-dir", str(tmp_path / "run")])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1  # a usage error, one line, whether tyro or the settings find it
    assert message in err and missing not in err


def test_config_file_settings_with_command_line_overrides(toy_images, tmp_path, capsys):
    """--config YAML sets options (a string '1e-3' is read as the float), the command line wins, the run saves
    the resolved settings in config.json, and that file reproduces them as a --config of its own."""
    from showattend.cli import main

    (tmp_path / "run.yaml").write_text("embed_dim: 16\nhidden_dim: 16\nattention_dim: 8\nlr: 1e-3\n"
                                       "batch_size: 4\nprecision: bf16\nmin_count: 1\n")
    args = ["train", "--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--epochs", "1", "--max-steps", "1", "--val-images", "1",
            "--val-beam-size", "1", "--no-progress", "--device", "cpu"]
    assert main(args + ["--config", str(tmp_path / "run.yaml"), "--batch-size", "2",
                        "--out-dir", str(tmp_path / "a")]) == 0
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 16 and saved["train"]["lr"] == 1e-3
    assert saved["train"]["batch_size"] == 2 and saved["train"]["precision"] == "bf16"
    assert main(args + ["--config", str(tmp_path / "a" / "config.json"), "--out-dir", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "config.json").read_text())
    assert again["model"] == saved["model"]
    assert {k: v for k, v in again["train"].items() if k != "out_dir"} == \
        {k: v for k, v in saved["train"].items() if k != "out_dir"}
    (tmp_path / "bad.yaml").write_text("batch_sise: 4\n")
    capsys.readouterr()
    assert main(args + ["--config", str(tmp_path / "bad.yaml")]) == 2
    assert "unknown settings batch_sise" in capsys.readouterr().err


def test_resume_keeps_the_runs_settings_and_a_new_run_does_not_overwrite_one(toy_images, tmp_path, capsys):
    """--resume takes the training settings from last.pt (options given again override them, and are reported);
    inside an epoch the batches' settings cannot change; a run without --resume refuses a folder with a run."""
    from showattend.cli import main

    data = ["--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--out-dir", str(tmp_path / "run"), "--no-progress",
            "--device", "cpu"]
    first = ["--min-count", "1", "--batch-size", "4", "--embed-dim", "16", "--hidden-dim", "16",
             "--attention-dim", "8", "--val-beam-size", "1", "--save-every", "3", "--epochs", "1"]
    assert main(["train", *data, *first, "--max-steps", "1"]) == 0  # epoch 1: one step
    capsys.readouterr()
    assert main(["train", *data, "--epochs", "1"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", *data, "--resume", "--epochs", "2", "--max-steps", "1"]) == 0
    out, err = capsys.readouterr()
    assert "resuming with changed settings (applied): epochs 1 -> 2" in err and "min count 1" in err  # messages: stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["batch_size"], saved["min_count"], saved["save_every"], saved["epochs"]) == (4, 1, 3, 2)
    # a checkpoint inside an epoch: its batches must not change
    engine = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["engine"]
    assert engine["pos"] == 0
    assert main(["train", *data, "--resume", "--epochs", "3", "--max-steps", "0", "--save-every", "2"]) == 0
    # nothing left: the run says so
    assert main(["train", *data, "--resume"]) == 0
    assert "nothing to train: 3 epochs done" in capsys.readouterr().err
    # best.pt without last.pt: nothing to resume from, and the best model is not replaced
    os.remove(tmp_path / "run" / "last.pt")
    assert main(["train", *data, "--resume"]) == 1
    assert "holds best.pt but no last.pt" in capsys.readouterr().err and (tmp_path / "run" / "best.pt").exists()


def _resumed_trainer(tmp_path, make, **changes):
    """Train one epoch, then build the Trainer a --resume with ``changes`` builds (the loop is not run)."""
    task, cfg = make(tmp_path)
    cfg.epochs = 1
    Trainer(task, cfg, DistInfo(), torch.device("cpu")).fit()
    ckpt = load_checkpoint(str(tmp_path / "run" / "last.pt"), None)
    task, cfg = make(tmp_path)
    for k, v in changes.items():
        setattr(cfg, k, v)
    return Trainer(task, cfg, DistInfo(), torch.device("cpu"), ckpt), ckpt


def test_optimizer_settings_given_on_resume_are_applied(tmp_path):
    """--lr, --weight-decay and --lr-decay given on --resume reach the optimizer and the scheduler that last.pt
    restored (they won before); settings left alone keep the run's state (a decayed learning rate stays)."""
    trainer, ckpt = _resumed_trainer(tmp_path, toy_caption_task, lr=0.01, weight_decay=0.5, lr_decay=0.1)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.01]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.5]
    assert trainer.scheduler.factor == 0.1 and trainer.scheduler.get_last_lr() == [0.01]
    (tmp_path / "same").mkdir()
    trainer, ckpt = _resumed_trainer(tmp_path / "same", toy_caption_task)
    assert trainer.optimizer.state_dict()["param_groups"] == ckpt["optimizer"]["param_groups"]
    assert trainer.scheduler.factor == ckpt["scheduler"]["factor"]


def test_the_encoder_learning_rate_given_on_resume_reaches_its_group(tmp_path):
    """Fine-tuning the encoder's top block: the optimizer has the decoder's group and the block's; --encoder-lr
    given on resume sets the second only, --lr the first only, --weight-decay both."""
    make = lambda p: toy_caption_task(p, fine_tune_blocks=1)  # noqa: E731
    trainer, ckpt = _resumed_trainer(tmp_path, make, encoder_lr=0.02, weight_decay=0.1)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [TrainConfig.lr, 0.02]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1, 0.1]
    assert len(trainer.optimizer.param_groups[1]["params"]) > 0
    (tmp_path / "b").mkdir()
    trainer, _ = _resumed_trainer(tmp_path / "b", make, lr=0.03)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.03, TrainConfig.encoder_lr]


def test_settings_that_cannot_change_on_resume_are_refused_with_exit_2(toy_images, tmp_path, capsys):
    """Model options, the vocabulary's settings and, inside an epoch, the data: exit 2 naming each, never
    reported as changed and then ignored."""
    from showattend.cli import main

    data = ["--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--out-dir", str(tmp_path / "run"), "--no-progress",
            "--device", "cpu"]
    first = ["--min-count", "1", "--batch-size", "4", "--embed-dim", "16", "--hidden-dim", "16",
             "--attention-dim", "8", "--val-beam-size", "1", "--epochs", "1", "--max-steps", "1"]
    assert main(["train", *data, *first]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    for extra, named in [(["--embed-dim", "32"], "--embed-dim 32"), (["--dropout", "0.1"], "--dropout 0.1"),
                         (["--encoder", "efficientnet_lite2"], "--encoder 'efficientnet_lite2'"),
                         (["--min-count", "2"], "--min-count (1 -> 2)")]:
        assert main(["train", *data, "--resume", "--epochs", "2", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert named in err and "Start a new run" in err, err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing was trained or written
    # at an epoch's end the data may change (and is applied); inside an epoch it may not
    assert main(["train", *data, "--resume", "--epochs", "2", "--max-steps", "0", "--save-every", "1",
                 "--max-caption-len", "30"]) == 0
    assert "max_caption_len 40 -> 30" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_caption_len"] == 30


def test_translation_settings_that_cannot_change_on_resume_are_refused(tmp_path, capsys):
    from showattend.cli import main

    data = tmp_path / "mt_data"
    write_toy_parallel(data)
    args = ["translate", "train", "--data", str(data), "--out-dir", str(tmp_path / "mt"), "--vocab-size", "40",
            "--embed-dim", "8", "--encoder-hidden", "8", "--decoder-hidden", "16", "--attention-dim", "8",
            "--batch-size", "12", "--epochs", "1", "--max-steps", "1", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    capsys.readouterr()
    for extra, named in [(["--vocab-size", "30"], "--vocab-size (40 -> 30)"),
                         (["--decoder", "bahdanau"], "--decoder 'bahdanau'")]:
        assert main(args + ["--resume", "--epochs", "2", *extra]) == 2, extra
        assert named in capsys.readouterr().err
    assert main(args + ["--resume", "--epochs", "2", "--lr", "0.5"]) == 0
    assert torch.load(tmp_path / "mt" / "last.pt", weights_only=True)["optimizer"]["param_groups"][0]["lr"] in \
        (0.5, 0.25)  # applied (and halved after the epoch if validation did not improve)


def test_resuming_inside_an_epoch_needs_the_same_batches(toy_images, tmp_path, capsys):
    from showattend.cli import main

    data = ["--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--out-dir", str(tmp_path / "run"), "--no-progress",
            "--device", "cpu", "--min-count", "1", "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim",
            "8", "--val-beam-size", "1", "--epochs", "1"]
    p = _cli(["train", *data, "--batch-size", "4", "--save-every", "2"], env={"SHOWATTEND_KILL_AT_STEP": "3"},
             check=False)
    assert p.returncode == -signal.SIGKILL
    assert main(["train", *data, "--resume", "--batch-size", "2"]) == 2
    assert "needs the same batches and data, but these settings changed: --batch-size (4 -> 2)" in \
        capsys.readouterr().err
    other = tmp_path / "other.json"
    shutil.copy(toy_images / "dataset_toy.json", other)
    assert main(["train", *data, "--resume", "--data", str(other)]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", *data, "--resume", "--length-buckets"]) == 2
    assert "--length-buckets (False -> True)" in capsys.readouterr().err
    assert main(["train", *data, "--resume"]) == 0


def test_overwrite_replaces_a_run_and_stale_temporary_files_are_removed(toy_images, tmp_path, capsys):
    from showattend.cli import main

    run = tmp_path / "run"
    args = ["train", "--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--out-dir", str(run), "--no-progress", "--device", "cpu",
            "--min-count", "1", "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8",
            "--val-beam-size", "1", "--epochs", "1", "--max-steps", "1"]
    assert main(args) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # the pid of a process that has exited
    stale = [run / f".last.pt.tmp.{dead}", run / f"metrics.jsonl.tmp.{dead}", run / f"curves.png.tmp.{dead}.png"]
    live = run / f".best.pt.tmp.{os.getppid()}"  # a writer that is still alive keeps its file
    for f in [*stale, live]:
        f.write_bytes(b"partial")
    assert main(args + ["--overwrite"]) == 0
    assert "removed the previous run's last.pt, best.pt" in capsys.readouterr().err
    assert not any(f.exists() for f in stale) and live.exists()
    assert [json.loads(x)["epoch"] for x in open(run / "metrics.jsonl")] == [1]


def test_kept_epochs_are_each_epochs_weights_and_overwrite_removes_them(toy_images, tmp_path, capsys):
    from showattend.captioning.captioner import Captioner
    from showattend.cli import main

    run = tmp_path / "run"
    args = ["train", "--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
            "--cache-dir", str(toy_images / "cache"), "--out-dir", str(run), "--no-progress", "--device", "cpu",
            "--min-count", "1", "--embed-dim", "16", "--hidden-dim", "16", "--attention-dim", "8",
            "--val-beam-size", "1", "--epochs", "2", "--max-steps", "1", "--patience", "5"]
    assert main(args + ["--keep-epochs"]) == 0
    assert sorted(os.listdir(run / "epochs")) == ["epoch_1.pt", "epoch_2.pt"]
    last = _params(run / "last.pt")
    second, first = _params(run / "epochs" / "epoch_2.pt"), _params(run / "epochs" / "epoch_1.pt")
    assert all(torch.equal(last[k], second[k]) for k in last) and any(not torch.equal(first[k], second[k])
                                                                      for k in first)
    cap = Captioner.from_checkpoint(str(run / "epochs" / "epoch_1.pt"), device="cpu")
    assert all(torch.equal(p, first[k]) for k, p in cap.decoder.state_dict().items())
    assert main(args + ["--overwrite"]) == 0
    assert "and 2 epochs/epoch_N.pt" in capsys.readouterr().err and os.listdir(run / "epochs") == []


def test_the_feature_cache_is_encoded_at_the_models_image_size(toy_images, tmp_path, capsys):
    """--image-size reaches the encoder: at 96 px Lite0 gives a 3x3 grid (L = 9), the size is recorded, and a
    cache whose index.json was edited to another size is refused instead of being used."""
    from showattend.cli import main

    common = ["--data", str(toy_images / "dataset_toy.json"), "--images", str(toy_images / "images"),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(["cache", *common, "--image-size", "96"]) == 0
    folder, = (tmp_path / "cache").glob("toy-efficientnet_lite0-96-*")
    store = FeatureStore(str(folder))
    assert store.meta["image_size"] == 96 and store.array.shape[1] == 9
    meta = json.loads((folder / "index.json").read_text())
    (folder / "index.json").write_text(json.dumps({**meta, "image_size": 224}))
    capsys.readouterr()
    assert main(["cache", *common, "--image-size", "96"]) == 1
    assert f"{folder}/index.json does not match its own fingerprint (edited or corrupt); remove {folder}" in \
        capsys.readouterr().err


def test_a_baseline_decay_given_on_resume_is_applied(tmp_path):
    """The REINFORCE baseline's state comes from last.pt, its decay from the settings (the saved one won)."""
    trainer, ckpt = _resumed_trainer(tmp_path, lambda p: toy_caption_task(p, attention="hard"), baseline_decay=0.5)
    assert ckpt["task_state"]["baseline"]["decay"] == 0.9 and trainer.task.objective.baseline.decay == 0.5
    assert trainer.task.objective.baseline.steps == ckpt["task_state"]["baseline"]["steps"] > 0
