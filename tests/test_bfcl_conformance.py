"""fcagent's BFCL checker against the official one (bfcl-eval 2026.3.23), case by case: 38,095 model
outputs over every simple_python problem and 200 problems of four other categories, each a gold answer
or one of ~60 kinds of systematic change, with the official checker's verdict (../shared/data)."""

import gzip
import json
from collections import Counter

import pytest

from fcagent.core.calls import Call
from fcagent.tasks.bfcl import BfclTask, check_bfcl


@pytest.fixture(scope="module")
def corpus(data_dir):
    path = data_dir / "bfcl-conformance" / "official_verdicts.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    problems = {p.id: p for cat in {r["category"] for r in rows} for p in BfclTask(cat, data_dir=data_dir).load()}
    return rows, problems


def _calls(output) -> list[Call]:
    return [Call(name=name, args=args) for item in output for name, args in item.items()]


def test_every_official_verdict_is_reproduced(corpus):
    rows, problems = corpus
    assert len(rows) == 38_095
    disagree = Counter()
    for r in rows:
        p = problems[r["id"]]
        ours = check_bfcl(p.source, p.functions, p.answer, _calls(r["output"])).success
        if ours != r["official_valid"]:
            disagree[(r["perturbation"], r["official_valid"])] += 1
    assert not disagree, disagree.most_common(10)


def test_names_follow_the_mode_the_model_runs_in(corpus):
    _, problems = corpus
    p = problems["simple_python_1"]  # math.factorial
    dotted = [Call(name="math.factorial", args={"number": 5})]
    underscored = [Call(name="math_factorial", args={"number": 5})]
    assert check_bfcl(p.source, p.functions, p.answer, dotted).success  # prompt mode: names exact
    assert not check_bfcl(p.source, p.functions, p.answer, underscored).success
    # function-calling mode (APIs that forbid dots in names): the official checker expects underscores
    assert check_bfcl(p.source, p.functions, p.answer, underscored, names="underscored").success
    assert not check_bfcl(p.source, p.functions, p.answer, dotted, names="underscored").success
