#!/usr/bin/env bash
# Mutation probes: each probe breaks one behaviour in a scratch copy of the tracked tree and runs the tests that
# guard it there (not the whole suite: a few seconds to a minute each on 2 cores); the tests that fail are
# listed. Every probe must make some test fail: a line "SURVIVED" is a gap in the tests.
# Usage: scripts/probes.sh [NAME-SUBSTRING]   (needs the .venv that scripts/test.sh creates)
set -u
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PY="$SRC/.venv/bin/python"
ONLY="${1:-}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
SURVIVED=0
probe() {  # name, file, python patch script (gets the file as argv[1]), pytest arguments
    local name="$1" file="$2" script="$3"; shift 3
    [[ -n "$ONLY" && "$name" != *"$ONLY"* ]] && return
    rm -rf "$WORK/copy"; mkdir -p "$WORK/copy"
    (cd "$SRC" && git ls-files | tar -cf - -T - | tar -xf - -C "$WORK/copy")
    (cd "$WORK/copy" && python3 -c "$script" "$file") || { echo "PROBE $name: patch did not apply"; SURVIVED=1; return; }
    echo "PROBE $name"
    local out
    out="$(cd "$WORK/copy" && PYTHONPATH="$WORK/copy" "$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1)"
    echo "$out" | grep -E "^FAILED|^ERROR| passed| failed" | sed 's/^/    /'
    if ! echo "$out" | grep -qE "^FAILED|^ERROR"; then echo "    SURVIVED"; SURVIVED=1; fi
}
sub() {  # a patch script replacing the one occurrence of $1 by $2
    echo "import sys; p = sys.argv[1]; s = open(p).read(); old, new = $1, $2; assert s.count(old) == 1, old; open(p, 'w').write(s.replace(old, new))"
}
DEC=showattend/captioning/network.py
LOSSES=showattend/captioning/losses.py
SEARCH=showattend/search.py
TRAINER=showattend/engine/trainer.py

# -- the attention models and their search
probe "REINFORCE sign flipped" $LOSSES "$(sub "'objective = -fit.sum() + reinforce_weight'" "'objective = -fit.sum() - reinforce_weight'")" tests/test_hard_attention.py
probe "detach removed from the hard-attention reward" $LOSSES "$(sub "'reward = log_lik.detach() / per_caption'" "'reward = log_lik / per_caption'")" tests/test_hard_attention.py
probe "detach removed in reinforce_surrogate" $LOSSES "$(sub "'return (reward.detach() - baseline)'" "'return (reward - baseline)'")" tests/test_hard_attention.py tests/test_scst.py
probe "Luong input feeding removed" showattend/translation/network.py "$(sub "'self.rnn(torch.cat([e, h_tilde], dim=-1), (h, cell))'" "'self.rnn(torch.cat([e, torch.zeros_like(h_tilde)], dim=-1), (h, cell))'")" tests/test_translation.py
probe "beta gate replaced by 1" $DEC "$(sub "'z = beta.unsqueeze(1) * att.context  # (B, D)'" "'z = att.context  # (B, D)'")" tests/test_decoder.py
probe "<end> not forced at max_len (beam)" $SEARCH "$(sub "'        log_probs = _force_end(log_probs, eos)\n'" "'        pass\n'")" tests/test_search.py

# -- issue "Trust the path users train on"
probe "word table kept across a parameter update (the old cache rule)" $DEC "$(sub "'    return bool(torch.stack([(t == c).all() for t, c in zip(tensors, copies)]).all())'" "'    return True'")" tests/test_validation.py tests/test_decoder.py
probe "resume: a changed learning rate not applied" $TRAINER "$(sub "'                group[\"lr\"] = getattr(self.cfg, setting)'" "'                pass'")" tests/test_engine.py -k "applied or encoder_learning or refused"
probe "resume: weight decay not applied" $TRAINER "$(sub "'                group[\"weight_decay\"] = self.cfg.weight_decay'" "'                pass'")" tests/test_engine.py -k "applied"
probe "resume: lr decay not applied" $TRAINER "$(sub "'            self.scheduler.factor = self.cfg.lr_decay'" "'            pass'")" tests/test_engine.py -k "applied"
probe "resume: vocabulary settings not refused" showattend/engine/resume.py "$(sub "'fixed = sorted(k for k in changed if k in task_cls.fixed_settings)'" "'fixed = []'")" tests/test_engine.py -k "refused"
probe "resume: model options not refused" showattend/captioning/train.py "$(sub "'        check_same_model(model_cfg, saved_cfg, f\"{last}\", resume=True)\n'" "''")" tests/test_engine.py -k "refused"
probe "resume: data changed inside an epoch not refused" showattend/engine/resume.py "$(sub "'BATCH_SETTINGS + tuple(task_cls.data_settings)'" "'BATCH_SETTINGS'")" tests/test_engine.py -k "inside_an_epoch"
probe "every GPU's RNG state saved" showattend/engine/state.py "$(sub "'state[\"cuda\"] = torch.cuda.get_rng_state()'" "'state[\"cuda\"] = torch.cuda.get_rng_state_all()'")" tests/test_devices.py
probe "precision auto takes emulated bf16" showattend/engine/config.py "$(sub "'return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None'" "'return torch.bfloat16 if torch.cuda.is_bf16_supported() else None'")" tests/test_devices.py
probe "DDP broadcasts buffers always" $TRAINER "$(sub "'        sync = buffers_trained(model)'" "'        sync = True'")" tests/test_engine.py -k "two_gloo_processes_train_like_one and soft"
probe "batch norm in eval mode counted as trained" showattend/engine/distributed.py "$(sub "'m.training and m.track_running_stats'" "'m.track_running_stats'")" tests/test_devices.py
probe "top() returns the transposed view again" showattend/captioning/encoders.py "$(sub "'        return x.permute(0, 2, 3, 1).reshape(B, -1, x.size(1))'" "'        return x.flatten(2).transpose(1, 2)'")" tests/test_finetune.py -k "gradients"
probe "--from-images reads the image once per caption" showattend/captioning/task.py "$(sub "'read=not isinstance(store, ImageStore)'" "'read=True'")" tests/test_finetune.py -k "once_per_batch"

# -- issue "Scores you can trust on any data"
probe "SCST: the init's score not the one to beat" showattend/captioning/train.py "$(sub "'validate_start=start.init'" "'validate_start=False'")" tests/test_scst.py -k "keeps_the_model"
probe "SCST: validation CIDEr on vocabulary ids again" showattend/captioning/scst.py "$(sub "'        return cider({r.key: r.tokens for r in self.val_records}, {k: r.words for k, r in results.items()})'" "'        hyps = [self.vocab.encode(results[r.key].words, add_specials=False) for r in self.val_records]\n        refs = [[self.vocab.encode(t[:self.cfg.max_caption_len], add_specials=False) for t in r.tokens if t] for r in self.val_records]\n        return 100 * float(CiderD(refs, len(self.vocab)).score_lists(hyps, range(len(hyps))).mean())'")" tests/test_scst.py -k "coco_captions"
probe "an --init run's start not saved in last.pt" $TRAINER "$(sub "'        self._save_last()  # a run killed in its first epoch resumes (a folder with best.pt needs last.pt)'" "'        pass'")" tests/test_scst.py -k "killed_in_its_first_epoch"
probe "resume: a training set of another size accepted inside an epoch" showattend/engine/resume.py "$(sub "'    if engine[\"pos\"] and items is not None and engine.get(\"items\", items) != items:'" "'    if False:'")" tests/test_devices.py
probe "COCO: every image of an official file in val" showattend/captioning/data.py "$(sub "'        split = coco_file_split(annotation_file)'" "'        split = \"val\"'")" tests/test_data.py -k "coco"
probe "evaluate: images keyed by id" showattend/captioning/evaluate.py "$(sub "'    hyps = {r.key: results[r.key].text for r in records}'" "'    hyps = {r.image_id: results[r.key].text for r in records}'")" tests/test_evaluate.py
probe "scoring: references not made one line" showattend/captioning/metrics.py "$(sub "'    gts = tok({k: [_one_line(r) for r in references[k]] for k in hypotheses})'" "'    gts = tok({k: list(references[k]) for k in hypotheses})'")" tests/test_evaluate.py
probe "scoring: the tokenizer's lines not checked" showattend/captioning/metrics.py "$(sub "'    if out.pop(key, None) != [text] or'" "'    if out.pop(key, None) is None and'")" tests/test_evaluate.py
probe "training captions longer than the limit kept" showattend/captioning/data.py "$(sub "'                if len(tokens) > max_len:'" "'                if False:'")" tests/test_data.py -k "image_row"
probe "training pairs longer than the limit kept" showattend/translation/data.py "$(sub "'        elif max(len(s_ids), len(t_ids)) > max_len:'" "'        elif False:'")" tests/test_translation.py -k "dropped_not_cut"
probe "translation: lowercased BLEU not lowercased" showattend/translation/evaluate.py "$(sub "'sacrebleu.metrics.BLEU(lowercase=True)'" "'sacrebleu.metrics.BLEU()'")" tests/test_translation.py -k "three_forms"

# -- issue "The GPU path" (the parts done)
probe "a host read inside a torch function in the captioning step" showattend/captioning/task.py "$(sub "'        x, image, caps, lengths = batch.features.float(), batch.image, batch.captions, batch.lengths'" "'        x, image, caps, lengths = batch.features.float(), batch.image, batch.captions, batch.lengths; torch.nonzero(caps)'")" tests/test_reads.py -k "reads_nothing"
probe "the decoder's mask copied from the host again" showattend/captioning/network.py "$(sub "'        mask = betas >= 0  # (B, T-1)'" "'        mask = betas >= 0; _ = torch.tensor(steps).nonzero()'")" tests/test_reads.py -k "reads_nothing"
probe "SCST samples drawn per process again" showattend/search.py "$(sub "'                u = u[rows]'" "'                u = u[:len(rows)]'")" tests/test_scst.py -k "global_batch"
probe "a short batch dropped from the positions again" showattend/engine/distributed.py "$(sub "'    todo = [(i, b) for i, b in enumerate(batches) if i >= pos]'" "'    todo = [(i, b) for i, b in enumerate([b for b in batches if len(b) >= world]) if i >= pos]'")" tests/test_devices.py
probe "the search's results read one tensor at a time" showattend/hypotheses.py "$(sub "'    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu().numpy()\n'" "'    return [t.cpu().numpy().astype(np.float64) for t in tensors]\n'")" tests/test_reads.py tests/test_search.py
probe "CIDEr-D reward with a boolean mask" showattend/captioning/cider.py "$(sub "'        orders = orders[perm]  # (S, W)'" "'        orders = orders[perm]; _ = codes[codes >= 0]'")" tests/test_reads.py -k "cider or scst"
probe "the word table's staleness check read twice" $DEC "$(sub "'    return bool(torch.stack([(t == c).all() for t, c in zip(tensors, copies)]).all())'" "'    return all(bool((t == c).all()) for t, c in zip(tensors, copies))'")" tests/test_reads.py -k "decode"
probe "--compile with the deferred weight products (graph breaks)" showattend/captioning/task.py "$(sub "'        self.decoder.defer_weight_grads = False  # the deferred products record into Python lists: a graph break\n'" "''")" tests/test_engine.py -k "compiled and soft"
probe "length buckets not sorted by length" showattend/engine/batches.py "$(sub "'        chunk = sorted(order[i:i + batch_size * pool], key=lambda j: lengths[j])'" "'        chunk = list(order[i:i + batch_size * pool])'")" tests/test_batches.py
probe "gpu_check: a test run that collects nothing accepted" scripts/gpu_check.py "$(sub "'    if p.returncode == 5:'" "'    if False:'")" tests/test_gpu_check.py -k "collected"

# -- issue "Images at the speed of the arithmetic"
ENC=showattend/captioning/encoders.py
probe "folded trunk: batch norm's shift dropped" $ENC "$(sub "'        bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale'" "'        bias = bn.bias.detach().double()'")" tests/test_encoders.py -k "folded"
probe "folded trunk: TF padding for every size (not the network's static padding)" $ENC "$(sub "'        if self.static is not None:'" "'        if False:'")" tests/test_encoders.py -k "folded"
probe "folded trunk: not folded again after new weights" $ENC "$(sub "'            if self._trunk_versions() != self._folded_from:'" "'            if False:'")" tests/test_encoders.py -k "folded"
probe "caption_stream: results out of order" showattend/captioning/captioner.py "$(sub "'            for p, x in batch:'" "'            for p, x in reversed(batch):'")" tests/test_inputs.py -k "caption_stream"

# -- issue "The shape": the command line parsed once, its layers, one exit-code rule, SCST as a loss strategy
OPT=showattend/options.py
probe "--config wins over an option given on the command line" $OPT "$(sub "'        if f.name in given:'" "'        if False:'")" tests/test_engine.py -k "config_file" tests/test_encoders.py -k "native_size"
probe "--config: true taken as an integer" $OPT "$(sub "'    if value is None or isinstance(value, bool) != (target is bool) or wrong:'" "'    if value is None or wrong:'")" tests/test_bad_inputs.py -k "exit_code"
probe "--scst and --init from a file bring no defaults" showattend/commands.py "$(sub "'        values = {**self.derived_settings(rebuild(train_cls, self.train, given, values)), **values}'" "'        values = {**self.derived_settings(self.train), **values}'")" tests/test_scst.py -k "defaults_and_errors"
probe "tyro's boxed errors printed as they are" showattend/cli.py "$(sub "'            raise UsageError(_tyro_error(errors.getvalue())) from None'" "'            raise UsageError(errors.getvalue()) from None'")" tests/test_inputs.py -k "top_level_help"
probe "--model and --checkpoint together accepted" showattend/commands.py "$(sub "'        if self.model and self.checkpoint:'" "'        if False:'")" tests/test_bad_inputs.py -k "exit_code"
probe "--scst trains the likelihood objective" showattend/captioning/train.py "$(sub "'                       objective=SelfCritical if cfg.scst else Likelihood)'" "'                       objective=Likelihood)'")" tests/test_scst.py -k "raises_the_reward"

exit $SURVIVED
