"""The bad-input corpus (``tests/bad_inputs.py``): every case keeps the promise, and the table in docs/reliability.md is current."""
import os
import socket

import pytest

from bad_inputs import make_corpus, run_case, table
from conftest import ROOT

START, END = "<!-- bad-input table: python tests/bad_inputs.py -->", "<!-- end of bad-input table -->"


def _online() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    here = os.getcwd()
    os.chdir(root)  # "./-dash.jpg" is relative to it
    try:
        cases = make_corpus(root)
        online = _online()
        cases = [c for c in cases if not (c.offline and online)]
        yield root, cases, [run_case(c) for c in cases]
    finally:
        os.chdir(here)


@pytest.mark.slow
def test_every_bad_input_gets_its_exit_code_and_a_plain_message_without_traceback(corpus):
    root, cases, outcomes = corpus
    assert len(cases) >= 60
    assert {c.kind for c in cases} == {"image", "checkpoint", "data", "option"}
    failures = []
    for c, o in zip(cases, outcomes):
        stderr = " ".join(o.stderr.replace("│", " ").split())
        problems = [p for p, bad in [
            (f"exit code {o.code}, expected {c.code}", o.code != c.code),
            ("a traceback", o.traceback or "Traceback (most recent call last)" in o.stderr),
            (f"stderr lacks {c.message!r}", c.message not in stderr),
            (f"stdout has fewer than {c.good_outputs} lines",
             len([ln for ln in o.stdout.splitlines() if ln.strip()]) < c.good_outputs),
            (f"{c.absent} was created", c.absent is not None and os.path.exists(c.absent)),
        ] if bad]
        if c.code != 0 and not o.stderr.strip():
            problems.append("nothing on stderr")
        if problems:
            failures.append(f"{c.what} ({' '.join(c.argv[:3])} ...): {'; '.join(problems)}\n    stderr: "
                            f"{o.stderr.strip()[-300:]}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_the_documented_table_is_current(corpus):
    root, cases, outcomes = corpus
    readme = open(os.path.join(ROOT, "docs", "reliability.md"), encoding="utf-8").read()
    assert START in readme and END in readme, "docs/reliability.md lacks the bad-input table's markers"
    documented = readme.split(START)[1].split(END)[0].strip()
    current = table(cases, outcomes, str(root))
    if not any(c.offline for c in cases):  # online: the offline-only case was not run
        documented = "\n".join(ln for ln in documented.splitlines() if "offline" not in ln)
    for c in cases:
        if c.no_cuda and c.code == 0:  # a CUDA machine: the row documents the machine without one
            documented = "\n".join(ln for ln in documented.splitlines() if not ln.startswith(f"| {c.what} |"))
            current = "\n".join(ln for ln in current.splitlines() if not ln.startswith(f"| {c.what} |"))
    assert documented == current, "regenerate it: python tests/bad_inputs.py"
