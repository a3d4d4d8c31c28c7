"""Captioner = encoder + decoder: configuration, checkpoints, and the captioning API.

Usage::

    from showattend.captioning import Captioner
    cap = Captioner.from_pretrained("flickr8k-lite2-soft")
    r = cap.caption("assets/photos/coffee.jpg", beam_size=3)  # a list of images gives a list of results
    print(r.text)     # "a brown and white dog is looking at the camera": it knows Flickr8k's world
    r.alphas          # (n_words + 1, L) attention weights, one row per word and <end>
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, load_weights, save_checkpoint
from ..runs import resolve_device
from ..search import beam_search, greedy_search, sample_search
from .vocab import Vocab
from .network import Decoder, build_decoder
from .config import ModelConfig
from .encoders import Encoder
from .images import ImageError, ImageSource, load_image

__all__ = ["CaptionResult", "Captioner", "resolve_device", "checkpoint_config",
           "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "showattend-captioner"


def checkpoint_config(ckpt: dict, path: str):
    """The :class:`ModelConfig` and :class:`~showattend.captioning.vocab.Vocab` of a loaded captioner checkpoint.

    Raises:
        CheckpointError: either is malformed (the message names the file).
    """
    try:
        return ModelConfig.from_dict(ckpt["config"]), Vocab(ckpt["vocab"])
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except (TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: bad model config or vocabulary in the checkpoint ({err})") from None


@dataclass
class CaptionResult:
    """One caption.

    Attributes:
        words: generated words (without ``<end>``).
        log_prob: summed log-probability of the words and ``<end>`` (natural log).
        score: the search's ranking score, log_prob / n^p for n tokens (``<end>`` included) and length penalty
            p; −inf for an unfinished caption.
        alphas: (n, L) attention weights, one row per generated token (words, then ``<end>`` if emitted).
        betas: (n,) gating scalars β_t.
        grid: (h, w) of the annotation grid, h·w = L.
        finished: False if the caption was cut at the maximum length.
    """

    words: List[str]
    log_prob: float
    alphas: torch.Tensor
    betas: torch.Tensor
    grid: tuple
    finished: bool = True
    score: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(self.words)


class _ImageReads(torch.utils.data.Dataset):
    """(path, (3, size, size) image) for each path, or (path, error message) for one that cannot be read."""

    def __init__(self, paths: List[str], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.paths[i], load_image(self.paths[i], self.size)
        except ImageError as err:
            return self.paths[i], str(err)


class Captioner:
    """Encoder + decoder + vocabulary, ready to caption images.

    Args:
        decoder: a trained :class:`~showattend.captioning.network.Decoder`.
        vocab: its vocabulary.
        config: its :class:`ModelConfig`.
        encoder: the CNN; built from ``config`` (with its ImageNet weights) on first use if None.
        device: "auto", "cpu", "cuda", ...
    """

    def __init__(self, decoder: Decoder, vocab: Vocab, config: ModelConfig, encoder: Optional[Encoder] = None,
                 device: Union[str, torch.device] = "auto"):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.decoder = decoder.to(self.device).eval()
        self.vocab, self.config = vocab, config
        self._encoder = encoder.to(self.device).eval() if encoder is not None else None
        #: what :meth:`decode` uses for the options not given: 3 and 0, or a bundled model's own (the validation
        #: split's best beam size and length penalty, from its registry entry)
        self.decoding: Dict[str, float] = {"beam_size": 3, "length_penalty": 0.0}

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = Encoder(self.config.encoder, weights=self.config.encoder_weights).to(self.device).eval()
        return self._encoder

    # -- checkpoints -------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str, device: Union[str, torch.device] = "auto") -> "Captioner":
        """Load a captioner saved by ``showattend train`` (or :meth:`save`).

        Raises:
            CheckpointError: missing/corrupt file, another format or version, or weights that do not match
                the stored vocabulary and configuration.
        """
        ckpt = load_checkpoint(path, CHECKPOINT_KIND, required=("config", "vocab", "model"))
        config, vocab = checkpoint_config(ckpt, path)
        decoder = build_decoder(config, len(vocab))
        load_weights(decoder, ckpt["model"], path, "decoder")
        encoder = None
        if config.fine_tune_blocks:  # the ImageNet weights, and the fine-tuned top blocks from the checkpoint
            if not ckpt.get("encoder"):
                raise CheckpointError(f"{path}: a fine-tuned captioner without its encoder weights")
            encoder = Encoder(config.encoder, weights=config.encoder_weights,
                              fine_tune_blocks=config.fine_tune_blocks)
            encoder.load_top_state_dict(ckpt["encoder"], path)
        decoder.float()
        return cls(decoder, vocab, config, encoder, device)

    @classmethod
    def from_pretrained(cls, name: str = "flickr8k-lite2-soft", device: Union[str, torch.device] = "auto"
                        ) -> "Captioner":
        """Load a bundled captioner by name: :func:`showattend.list_models` lists them, and
        :data:`showattend.PRETRAINED` holds their metadata (data, licence, metrics, decoding defaults).

        Raises:
            ValueError: no such bundled captioner. CheckpointError: its file is damaged.
        """
        from ..pretrained import get_model, weights_file

        captioner = cls.from_checkpoint(str(weights_file(name, "captioning")), device)
        captioner.decoding.update({k: v for k, v in get_model(name).decoding.items() if k in captioner.decoding})
        return captioner

    def state(self, half: bool = False) -> dict:
        """Checkpoint payload (plain data), optionally with fp16 weights: the decoder's, and with a fine-tuned
        encoder its top blocks' (``encoder``; the rest are its ImageNet weights)."""
        def plain(sd):
            return {k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in sd.items()}

        out = {"format": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "config": asdict(self.config),
               "vocab": self.vocab.to_list(), "model": plain(self.decoder.state_dict())}
        if self.config.fine_tune_blocks:
            out["encoder"] = plain(self.encoder.top_state_dict())
        return out

    def save(self, path: str, half: bool = False, **extra) -> None:
        """Write an inference checkpoint atomically (``extra`` adds plain fields, e.g. metrics)."""
        save_checkpoint(path, {**self.state(half), **extra})

    # -- inference --------------------------------------------------------------------------------------
    def banned_tokens(self, allow_unk: bool = False) -> torch.Tensor:
        """(V,) bool on the device: the tokens never generated (``<pad>``, ``<start>``, and ``<unk>`` unless
        ``allow_unk``), made once per search and applied by :meth:`_step`."""
        banned = torch.zeros(len(self.vocab), dtype=torch.bool, device=self.device)
        banned[[self.vocab.pad, self.vocab.start] + ([] if allow_unk else [self.vocab.unk])] = True
        return banned

    def _step(self, tokens, state, context, hard: bool = False, banned=None, weights=None, generator=None):
        """The search's step function (``functools.partial`` binds ``hard``, the (V,) mask of the tokens never
        generated, the decoder's :meth:`~showattend.captioning.network.Decoder.step_weights`, both made once
        per search, and the generator of hard attention's samples)."""
        annotations, keys = context
        logits, state, att, beta = self.decoder.step(tokens, state, annotations, keys, hard=hard, weights=weights,
                                                     generator=generator)
        log_probs = F.log_softmax(logits.float(), dim=-1).masked_fill_(banned, float("-inf"))  # (N, V)
        return log_probs, state, torch.cat([att.alpha, beta.unsqueeze(1)], dim=1)  # extra: (N, L + 1)

    @torch.no_grad()
    def decode(self, annotations: torch.Tensor, beam_size: Optional[int] = None, max_len: int = 20,
               length_penalty: Optional[float] = None, allow_unk: bool = False, attention: str = "soft",
               samples: int = 5, seed: int = 0, precision: str = "fp32") -> List[CaptionResult]:
        """Caption a batch of annotation vectors (batched beam search; greedy when ``beam_size`` is 1).

        Args:
            annotations: (B, L, D).
            beam_size: k; 1 means greedy decoding. None: :attr:`decoding`'s (3, or a bundled model's own).
            max_len: maximum generated tokens, ``<end>`` included.
            length_penalty: p of score / n^p (0: plain log-probability); also ranks the sampled searches of
                ``attention="hard"``. None: :attr:`decoding`'s (0, or a bundled model's own).
            allow_unk: let ``<unk>`` be generated (off by default: it is never a useful word).
            attention: "soft" decodes with the expected context Σ_i α_ti a_i (deterministic; the default for
                soft and hard models alike); "hard" samples a location s_t ~ α_t at every step of every beam,
                runs the search ``samples`` times and keeps the caption of each image with the best ranking score
                (log-probability / n^p, §4.1).
            samples: number of sampled searches for ``attention="hard"``.
            seed: seed of ``attention="hard"``'s location samples (a generator of its own: the same seed and
                inputs give the same captions, whatever else used the global random state).
            precision: "fp32", or "bf16": the decoder's products under bf16 autocast (weights and annotation
                vectors cast once per search; the log-probabilities and the search's scores stay fp32). Faster
                where the hardware has bf16 arithmetic (AVX-512 BF16 or AMX CPUs, recent GPUs); captions may
                differ where two words are nearly tied.

        Returns:
            B :class:`CaptionResult`.

        Raises:
            ValueError: unknown ``attention`` or ``precision``.
        """
        beam_size = int(self.decoding["beam_size"]) if beam_size is None else beam_size
        length_penalty = float(self.decoding["length_penalty"]) if length_penalty is None else length_penalty
        if attention not in ("soft", "hard"):
            raise ValueError(f"attention must be 'soft' or 'hard', got {attention!r}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if attention == "hard":
                generator = torch.Generator(device=self.device).manual_seed(seed)
                runs = [self._decode(annotations, beam_size, max_len, length_penalty, allow_unk, generator)
                        for _ in range(max(1, samples))]
                return [max(options, key=lambda r: r.score) for options in zip(*runs)]
            return self._decode(annotations, beam_size, max_len, length_penalty, allow_unk, None)

    def _decode(self, annotations, beam_size, max_len, length_penalty, allow_unk, generator):
        """One search; ``generator`` is given for hard attention's sampled locations, None for soft."""
        self.decoder.eval()
        step = functools.partial(self._step, hard=generator is not None, banned=self.banned_tokens(allow_unk),
                                 weights=self.decoder.step_weights(word_table=True), generator=generator)
        annotations = annotations.to(self.device, torch.float32)
        if torch.is_autocast_enabled(self.device.type):  # cast once, not at every step's context read
            annotations = annotations.to(torch.get_autocast_dtype(self.device.type))
        keys = self.decoder.attention.project_keys(annotations)  # (B, L, A), once per image
        state = self.decoder.init_state(annotations)
        start, end = self.vocab.start, self.vocab.end
        if beam_size == 1:
            hyps = greedy_search(step, state, (annotations, keys), start, end, max_len, length_penalty)
        else:
            hyps = [h[0] for h in beam_search(step, state, (annotations, keys), start, end, beam_size,
                                              max_len, length_penalty, shared_context=True)]  # no per-beam copies
        L = annotations.size(1)
        side = int(round(L ** 0.5))
        grid = (side, side) if side * side == L else (1, L)
        out = []
        for h in hyps:
            ext = h.extras.float() if h.extras is not None else torch.zeros(0, L + 1)
            out.append(CaptionResult(self.vocab.decode(h.tokens), h.log_prob, ext[:, :L], ext[:, L], grid,
                                     h.finished, h.score))
        return out

    @torch.no_grad()
    @torch.no_grad()
    def sample(self, annotations: torch.Tensor, samples: int = 1, greedy: bool = False, max_len: int = 20,
               generator: Optional[torch.Generator] = None, rows: Optional[torch.Tensor] = None,
               total_rows: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Captions drawn from the model, y_t ~ p(y_t | y_<t, a), or its argmax (``greedy``), on the device, as
        self-critical sequence training needs them (Rennie et al. 2017): token ids, nothing forced at the last
        step (:func:`~showattend.search.sample_search`). The decoder runs in the mode it is in (the caller's
        choice: SCST samples from the network without dropout).

        Args:
            annotations: (B, L, D) annotation vectors on the device.
            samples: k captions per image (rows b·k .. b·k + k − 1 are image b's).
            greedy, max_len, generator, rows, total_rows: as for :func:`~showattend.search.sample_search`.

        Returns:
            tokens (B·k, T) long, ``<end>`` included when drawn; lengths (B·k,) long, the tokens drawn.
        """
        dec = self.decoder
        step = functools.partial(self._step, banned=self.banned_tokens(), weights=dec.step_weights())
        keys = dec.attention.project_keys(annotations)  # (B, L, A), once per image
        return sample_search(step, dec.init_state(annotations), (annotations, keys), self.vocab.start,
                             self.vocab.end, max_len, samples, greedy, generator, rows=rows, total_rows=total_rows)

    @torch.no_grad()
    def encode(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """Images (any :data:`~showattend.captioning.images.ImageSource`: paths, URLs, PIL images, arrays,
        tensors) -> (B, L, D) annotation vectors."""
        size = self.config.image_size
        batch = torch.stack([load_image(x, size) for x in images])
        return self.encoder(batch.to(self.device))

    def caption(self, images: Union[ImageSource, Sequence[ImageSource]], beam_size: Optional[int] = None,
                max_len: int = 20, length_penalty: Optional[float] = None, batch_size: int = 32,
                attention: str = "soft", samples: int = 5, seed: int = 0, precision: str = "fp32"
                ) -> Union[CaptionResult, List[CaptionResult]]:
        """Caption images given as file paths, http(s) URLs, PIL images, (H, W, 3) numpy arrays or (3, H, W)
        tensors in [0, 1] (decoding options: :meth:`decode`): one image gives its :class:`CaptionResult`, a list
        of images a list of them.

        Raises:
            ImageError: an image cannot be read (the message names it). Use :meth:`caption_files` to caption
                the readable files of a list and collect the failures.
        """
        single = isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)) or \
            isinstance(images, torch.Tensor) and images.ndim == 3
        batch = [images] if single else images
        results = []
        for i in range(0, len(batch), batch_size):
            chunk = batch[i:i + batch_size]
            results += self.decode(self.encode(chunk), beam_size, max_len, length_penalty, attention=attention,
                                   samples=samples, seed=seed, precision=precision)
        return results[0] if single else results

    def caption_files(self, paths: Sequence[str], **kwargs):
        """Caption each readable file; return (results by path, errors by path) without stopping at a bad file.
        Arguments as for :meth:`caption_stream`."""
        results, errors = {}, {}
        for p, r in self.caption_stream(paths, **kwargs):
            (results if isinstance(r, CaptionResult) else errors)[p] = r
        return results, errors

    def caption_stream(self, paths: Sequence[str], batch_size: int = 32, num_workers: Optional[int] = None,
                       **kwargs) -> Iterator[Tuple[str, Union[CaptionResult, str]]]:
        """Caption files (or URLs) as they are read: worker processes read and decode the images (Pillow) while
        the encoder and the search run on the batch before, a few batches ahead at most. Yields each path with its
        :class:`CaptionResult`, or with the error message of an image that cannot be read (it drops itself
        only), in the input order.

        Args:
            paths: image files or URLs. batch_size: images encoded and decoded at once.
            num_workers: reading processes; None: one for each CPU core but one (at least 1, at most 4), none
                for a single image.
            kwargs: decoding options of :meth:`decode`.
        """
        from torch.utils.data import DataLoader

        if num_workers is None:
            num_workers = 0 if len(paths) < 2 else min(4, max(1, (os.cpu_count() or 1) - 1))
        loader = DataLoader(_ImageReads(list(paths), self.config.image_size), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=list,
                            prefetch_factor=2 if num_workers else None)
        for batch in loader:  # [(path, (3, H, W) tensor or an error message)], in order
            good = [(p, x) for p, x in batch if isinstance(x, torch.Tensor)]
            if good:
                with torch.no_grad():
                    feats = self.encoder(torch.stack([x for _, x in good]).to(self.device))
                results = dict(zip([p for p, _ in good], self.decode(feats, **kwargs)))
            for p, x in batch:
                yield p, results[p] if isinstance(x, torch.Tensor) else x
