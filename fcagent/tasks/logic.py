"""First-order logic (the paper's other task): a knowledge base queried through functions.

The problem's context is parsed into a knowledge base; the model sees only the question and must
look facts and rules up with `facts_about(entity)` and `rules_about(category)`, then answer with
`final_answer("True" | "False" [| "Unknown"])`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from langchain_core.tools import BaseTool, StructuredTool

from fcagent.core.calls import Call
from fcagent.tasks._data import find_data_file
from fcagent.tasks.base import (
    DataError,
    Problem,
    Task,
    Verdict,
    WorkedExample,
    read_json_records,
    require,
)

__all__ = ["LogicTask", "KnowledgeBase", "parse_prontoqa_context"]

_ANSWERS = {"A": "True", "B": "False", "C": "Unknown"}


def _singular(word: str) -> str:
    word = word.lower()
    if word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


@dataclass
class KnowledgeBase:
    """Facts about entities and rules about categories, each kept as the sentence it came from."""

    facts: dict[str, list[str]] = field(default_factory=dict)  # entity (lowercase) -> sentences
    rules: dict[str, list[str]] = field(default_factory=dict)  # category or word (lowercase) -> sentences
    # category -> [(property, positive)] for ProntoQA-style reasoning (gold chains, generator)
    edges: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)
    memberships: dict[str, list[str]] = field(default_factory=dict)  # entity -> categories

    def facts_about(self, entity: str) -> str:
        found = self.facts.get(entity.strip().lower())
        return " ".join(found) if found else f"No facts about {entity}."

    def rules_about(self, category: str) -> str:
        key = _singular(category.strip())
        found = self.rules.get(key) or self.rules.get(category.strip().lower())
        return " ".join(found) if found else f"No rules about {category}."

    def tools(self) -> list[BaseTool]:
        def facts_about(entity: str) -> str:
            """Everything stated about an entity (a person or thing), e.g. facts_about(entity="Sam")."""
            return self.facts_about(entity)

        def rules_about(category: str) -> str:
            """Every rule about members of a category or about a property, e.g. rules_about(category="wumpus")."""
            return self.rules_about(category)

        return [StructuredTool.from_function(facts_about), StructuredTool.from_function(rules_about)]


_MEMBER = re.compile(r"^(?P<ent>[A-Z][a-z]+) is (?P<neg>not )?(?:(?:a|an) )?(?P<pred>[a-z]+)$")
_EACH = re.compile(r"^(?:Each|Every) (?P<cat>[a-z]+) is (?P<neg>not )?(?:(?:a|an) )?(?P<pred>[a-z]+)$")
_PLURAL = re.compile(r"^(?P<cat>[A-Z][a-z]+) are (?P<neg>not )?(?P<pred>[a-z]+)$")


def parse_prontoqa_context(context: str, *, where: str = "context") -> KnowledgeBase:
    sentences = [s.strip() for s in context.replace("\n", " ").split(".") if s.strip()]
    kb = KnowledgeBase()
    categories: set[str] = set()
    parsed = []
    for s in sentences:
        if m := _EACH.match(s):
            parsed.append(("rule", m["cat"].lower(), m["pred"], bool(m["neg"]), s))
            categories.add(m["cat"].lower())
        elif m := _PLURAL.match(s):
            cat = _singular(m["cat"])
            parsed.append(("rule", cat, m["pred"], bool(m["neg"]), s))
            categories.add(cat)
        elif m := _MEMBER.match(s):
            parsed.append(("fact", m["ent"].lower(), m["pred"], bool(m["neg"]), s))
        else:
            raise DataError(f"{where}: cannot read sentence {s!r}")
    for s in sentences:  # "X is a wumpus" names a category too
        if m := re.search(r" (?:a|an) ([a-z]+)$", s):
            categories.add(m.group(1))

    def norm(pred: str) -> str:
        return _singular(pred) if _singular(pred) in categories else pred.lower()

    for kind, subject, pred, neg, sentence in parsed:
        target = norm(pred)
        if kind == "rule":
            kb.rules.setdefault(subject, []).append(sentence + ".")
            kb.edges.setdefault(subject, []).append((target, not neg))
        else:
            kb.facts.setdefault(subject, []).append(sentence + ".")
            if not neg:
                kb.memberships.setdefault(subject, []).append(target)
    return kb


def _prontoqa_chain(kb: KnowledgeBase, entity: str, prop: str, answer: str) -> list[list[Call]] | None:
    """Look up the entity, then each category on the path until a rule settles `prop`."""
    steps = [[Call(name="facts_about", args={"entity": entity})]]
    frontier = list(kb.memberships.get(entity.lower(), []))
    seen: set[str] = set()
    while frontier:
        cat = frontier.pop(0)
        if cat in seen:
            continue
        seen.add(cat)
        steps.append([Call(name="rules_about", args={"category": cat})])
        for target, positive in kb.edges.get(cat, []):
            if target == prop:
                if (answer == "True") != positive:
                    return None
                steps.append([Call(name="final_answer", args={"answer": answer})])
                return steps
            if positive and target in kb.edges:
                frontier.append(target)
    return None


_STATEMENT = re.compile(r"(?:true or false|true, false, or unknown)\?\s*(?P<stmt>.+?)\.?\s*$", re.S)


def _statement(question: str, where: str) -> str:
    m = _STATEMENT.search(question)
    if not m:
        raise DataError(f"{where}: field `question` has no 'true or false? <statement>'")
    return m["stmt"].strip()


# Fictional ontology generator in ProntoQA's style: unlimited training problems.
_CATS = ["wumpus", "yumpus", "zumpus", "dumpus", "rompus", "numpus", "tumpus", "vumpus", "impus", "jompus",
         "gorpus", "shumpus", "lorpus", "brimpus", "sterpus", "grimpus", "lempus", "felpus"]
_PROPS = ["red", "blue", "large", "small", "hot", "cold", "happy", "sad", "bright", "dull", "wooden", "metallic",
          "sweet", "sour", "fast", "slow", "loud", "quiet", "kind", "mean", "opaque", "liquid", "floral", "spicy"]
_PEOPLE = ["Alex", "Fae", "Max", "Polly", "Rex", "Sally", "Sam", "Stella", "Wren", "Jo", "Lee"]


def _plural(cat: str) -> str:
    return cat + "es" if cat.endswith("s") else cat + "s"


def _generated_logic(rng: random.Random, index: int) -> Problem:
    hops = rng.randint(1, 5)
    cats = rng.sample(_CATS, hops + 2)
    props = rng.sample(_PROPS, hops + 3)
    entity = rng.choice(_PEOPLE)
    sentences = []
    for i in range(hops):  # the path: cats[0] -> cats[1] -> ... -> cats[hops]
        a, b = cats[i], cats[i + 1]
        sentences.append(rng.choice([f"Each {a} is {_article(b)} {b}.", f"{_plural(a).capitalize()} are {_plural(b)}."]))
        sentences.append(rng.choice([f"Every {a} is {props[i]}.", f"{_plural(a).capitalize()} are not {props[i]}."]))
    target, positive = props[hops], rng.random() < 0.5
    last = cats[hops]
    sentences.append(f"Each {last} is {'' if positive else 'not '}{target}.")
    # A distractor: another category with the opposite property, not on the path.
    sentences.append(f"{_plural(cats[hops + 1]).capitalize()} are {'not ' if positive else ''}{target}.")
    rng.shuffle(sentences)
    sentences.append(f"{entity} is {_article(cats[0])} {cats[0]}.")
    asked_true = rng.random() < 0.5
    stmt = f"{entity} is {'' if asked_true else 'not '}{target}"
    answer = "True" if asked_true == positive else "False"
    context = " ".join(sentences)
    question = f"Is the following statement true or false? {stmt}."
    chain = _prontoqa_chain(parse_prontoqa_context(context), entity, target, "True" if positive else "False")
    if chain:
        chain[-1] = [Call(name="final_answer", args={"answer": answer})]
    return Problem(id=f"logic-gen-{index}", task="logic", source="generated", question=question,
                   answer=answer, gold_chain=chain, meta={"context": context, "kind": "prontoqa"})


class LogicTask(Task):
    """`logic` (generated), `logic:prontoqa`, `logic:proofwriter`."""

    name = "logic"
    max_steps = 10
    max_new_tokens = 40
    instructions = ("Decide whether the statement is true or false. The facts and rules are not shown: look "
                    "them up one call at a time with facts_about and rules_about, following the categories "
                    "the entity belongs to. Then call final_answer with \"True\" or \"False\".")

    def load(self, *, split=None, limit=None, seed: int = 0) -> list[Problem]:
        source = self.source or "generated"
        if source == "generated":
            rng, problems, i = random.Random(seed), [], 0
            while len(problems) < (limit or 1000):
                p = _generated_logic(rng, i)
                i += 1
                if split is None or p.split == split:
                    problems.append(p)
            return problems
        if source not in ("prontoqa", "proofwriter"):
            raise DataError(f"unknown logic source `{source}`: use `logic`, `logic:prontoqa` or `logic:proofwriter`")
        files = ["prontoqa/dev.json"] if source == "prontoqa" else ["proofwriter/dev.json", "proofwriter/test.json"]
        problems = []
        for rel in files:
            path = find_data_file(rel, self.data_dir, hub_hint="the Logic-LM ProntoQA/ProofWriter files")
            for lineno, row in read_json_records(path):
                where = f"{path}: item {lineno}"
                problems.append(self._problem(row, source, where))
        return self._filter(problems, split, limit)

    def _problem(self, row: dict, source: str, where: str) -> Problem:
        context = require(row, "context", where)
        stmt = _statement(require(row, "question", where), where)
        letter = require(row, "answer", where)
        if letter not in _ANSWERS:
            raise DataError(f"{where}: field `answer` must be A, B or C, got {letter!r}")
        answer = _ANSWERS[letter]
        question = f"Is the following statement true{', false, or unknown' if source == 'proofwriter' else ' or false'}? {stmt}."
        if source == "prontoqa":
            kb = parse_prontoqa_context(context, where=where)
            m = re.match(r"(?P<ent>[A-Z][a-z]+) is (?P<neg>not )?(?P<prop>[a-z]+)$", stmt)
            if not m:
                raise DataError(f"{where}: cannot read statement {stmt!r}")
            positive_answer = answer if not m["neg"] else ("False" if answer == "True" else "True")
            chain = _prontoqa_chain(kb, m["ent"], m["prop"], positive_answer)
            if chain:
                chain[-1] = [Call(name="final_answer", args={"answer": answer})]
        else:
            words = stmt.split()
            subject = words[1] if words[0] == "The" else words[0]
            chain = [[Call(name="facts_about", args={"entity": subject})],
                     [Call(name="rules_about", args={"category": words[-1]})],
                     [Call(name="final_answer", args={"answer": answer})]]
        return Problem(id=f"{source}-{require(row, 'id', where)}", task="logic", source=source,
                       question=question, answer=answer, gold_chain=chain,
                       meta={"context": context, "kind": source})

    def tools_for(self, problem):
        if problem is None:
            return KnowledgeBase().tools()
        return _kb_for(problem).tools()

    def verify(self, problem, *, final_answer, calls) -> Verdict:
        got = str(final_answer).strip().strip(".").strip('"').capitalize() if final_answer is not None else ""
        if got not in ("True", "False", "Unknown"):
            return Verdict(success=False, reason=f"final answer must be True/False/Unknown, got {final_answer!r}")
        if got == problem.answer:
            return Verdict(success=True, reason="correct answer")
        return Verdict(success=False, reason=f"wrong answer: {got} (gold {problem.answer})")

    def examples(self) -> list[WorkedExample]:
        return [WorkedExample(
            question="Is the following statement true or false? Max is cold.",
            steps=[('{"name": "facts_about", "arguments": {"entity": "Max"}}', "Max is a gorpus."),
                   ('{"name": "rules_about", "arguments": {"category": "gorpus"}}', "Each gorpus is a lempus. Gorpuses are small."),
                   ('{"name": "rules_about", "arguments": {"category": "lempus"}}', "Every lempus is not cold."),
                   ('{"name": "final_answer", "arguments": {"answer": "False"}}', "")])]


def _kb_for(problem: Problem) -> KnowledgeBase:
    context = problem.meta.get("context", "")
    if problem.meta.get("kind") == "proofwriter":
        kb = KnowledgeBase()
        for s in [s.strip() for s in context.split(".") if s.strip()]:
            words = s.split()
            if s.startswith(("If ", "All ")) or words[0][0].islower() or (len(words) > 1 and words[1] == "things"):
                for w in set(re.findall(r"[a-z]+", s.lower())):
                    kb.rules.setdefault(w, []).append(s + ".")
                    if _singular(w) != w:
                        kb.rules.setdefault(_singular(w), []).append(s + ".")
            else:
                subject = words[1] if words[0] == "The" else words[0]
                kb.facts.setdefault(subject.lower(), []).append(s + ".")
        return kb
    return parse_prontoqa_context(context)
