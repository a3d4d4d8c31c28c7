#!/usr/bin/env bash
# Mutation probes for the tests of issue "Trust first": each probe breaks one behaviour in a scratch copy of the
# tracked tree and runs the suite there; the tests that fail are listed. Every probe must make some test fail.
# Usage: scripts/probes.sh   (needs the .venv that scripts/test.sh creates; about 1 min per probe on 2 cores)
set -u
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PY="$SRC/.venv/bin/python"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
probe() {  # name, file, python patch script (gets the file as argv[1]), pytest arguments
    local name="$1" file="$2" script="$3"; shift 3
    rm -rf "$WORK/copy"; mkdir -p "$WORK/copy"
    (cd "$SRC" && git ls-files | tar -cf - -T - | tar -xf - -C "$WORK/copy")
    (cd "$WORK/copy" && python3 -c "$script" "$file") || { echo "PROBE $name: patch did not apply"; return; }
    echo "PROBE $name"
    (cd "$WORK/copy" && PYTHONPATH="$WORK/copy" "$PY" -m pytest -q -p no:cacheprovider "$@" 2>&1 \
        | grep -E "^FAILED|^ERROR| passed| failed" | sed 's/^/    /')
}
sub() {  # a patch script replacing the one occurrence of $1 by $2
    echo "import sys; p = sys.argv[1]; s = open(p).read(); old, new = $1, $2; assert s.count(old) == 1, old; open(p, 'w').write(s.replace(old, new))"
}
DEC=showattend/captioning/decoder.py
BOUND="'bound = _normalise(best_live, max_len, length_penalty) if best_live < 0 else best_live'"
probe "REINFORCE sign flipped" $DEC "$(sub "'objective = -fit.sum() + reinforce_weight'" "'objective = -fit.sum() - reinforce_weight'")" tests
probe "detach removed from the reward (both places)" $DEC "$(sub "'reward = log_lik.detach() / words'" "'reward = log_lik / words'"); t = open(p).read(); open(p, 'w').write(t.replace('return (reward.detach() - baseline)', 'return (reward - baseline)'))" tests
probe "detach removed in hard_attention_loss only" $DEC "$(sub "'reward = log_lik.detach() / words'" "'reward = log_lik / words'")" tests
probe "detach removed in reinforce_surrogate only" $DEC "$(sub "'return (reward.detach() - baseline)'" "'return (reward - baseline)'")" tests
probe "Luong input feeding removed" showattend/translation/model.py "$(sub "'self.rnn(torch.cat([e, h_tilde], dim=-1), (h, cell))'" "'self.rnn(torch.cat([e, torch.zeros_like(h_tilde)], dim=-1), (h, cell))'")" tests
probe "beta gate replaced by 1" $DEC "$(sub "'z = beta * att.context'" "'z = att.context'")" tests
probe "early-stopping bound loosened (never stops early)" showattend/search.py "$(sub "$BOUND" "'bound = 0.0'")" tests
probe "early-stopping bound tightened (current length)" showattend/search.py "$(sub "$BOUND" "'bound = _normalise(best_live, t + 1, length_penalty) if best_live < 0 else best_live'")" tests
probe "<end> not forced at max_len (beam and greedy)" showattend/search.py "$(sub "'            log_probs = _force_end(log_probs, eos)\n'" "'            pass\n'"); t = open(p).read(); open(p, 'w').write(t.replace('        if t == max_len - 1:  # the last allowed token is <end>', '        if False:'))" tests
