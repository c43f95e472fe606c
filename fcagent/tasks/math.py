"""Math word problems solved with calculator functions (the paper's GSM8K setting)."""

from __future__ import annotations

import ast
import math
import random
import re
from typing import Any

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

__all__ = ["MathTask", "calculator_tools", "gsm8k_gold_chain", "parse_number"]


def _num(x: float) -> float | int:
    """Calculator results as a person writes them: 24 not 24.0, 0.1 not 0.1000000000000001."""
    if isinstance(x, bool):
        raise TypeError("booleans are not numbers here")
    x = round(float(x), 6)
    return int(x) if x.is_integer() and abs(x) < 1e15 else x


def add(a: float, b: float) -> float:
    """Add two numbers: a + b."""
    return _num(a + b)


def subtract(a: float, b: float) -> float:
    """Subtract b from a: a - b."""
    return _num(a - b)


def multiply(a: float, b: float) -> float:
    """Multiply two numbers: a * b."""
    return _num(a * b)


def divide(a: float, b: float) -> float:
    """Divide a by b: a / b."""
    if b == 0:
        raise ValueError("division by zero")
    return _num(a / b)


def power(base: float, exponent: float) -> float:
    """Raise base to exponent: base ** exponent."""
    if abs(exponent) > 64:
        raise ValueError("exponent too large")
    return _num(base**exponent)


def sqrt(x: float) -> float:
    """Square root of x."""
    if x < 0:
        raise ValueError("square root of a negative number")
    return _num(math.sqrt(x))


_CALCULATOR: list[BaseTool] = []


def calculator_tools() -> list[BaseTool]:
    if not _CALCULATOR:
        _CALCULATOR.extend(StructuredTool.from_function(f) for f in (add, subtract, multiply, divide, power, sqrt))
    return list(_CALCULATOR)


_OPS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide", ast.Pow: "power"}
_FUNCS = {"add": add, "subtract": subtract, "multiply": multiply, "divide": divide, "power": power}


def _expr_calls(expr: str) -> tuple[list[Call], float]:
    """Decompose an arithmetic expression into binary calculator calls, innermost first."""
    tree = ast.parse(expr.replace("^", "**"), mode="eval").body
    calls: list[Call] = []

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return _num(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return _num(-walk(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            name = _OPS[type(node.op)]
            args = {"base": left, "exponent": right} if name == "power" else {"a": left, "b": right}
            calls.append(Call(name=name, args=args))
            return _FUNCS[name](**args)
        raise ValueError(f"unsupported expression {ast.dump(node)[:40]}")

    return calls, walk(tree)


_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]*)>>")


def gsm8k_gold_chain(solution: str, answer: float) -> list[list[Call]] | None:
    """GSM8K's calculator annotations `<<48/2=24>>` as calculator calls, then `final_answer`.

    None when an annotation is not plain arithmetic (e.g. uses `%` or a function) or disagrees with
    its own result, so every gold chain that exists replays to the gold answer.
    """
    steps: list[list[Call]] = []
    for expr, result in _ANNOTATION.findall(solution):
        expr = expr.replace(",", "").strip()
        try:
            calls, value = _expr_calls(expr)
            expected = parse_number(result)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
            return None
        if expected is None or abs(value - expected) > 1e-4 * max(1.0, abs(expected)):
            return None
        steps += [[c] for c in calls]
    steps.append([Call(name="final_answer", args={"answer": _num(answer)})])
    return steps


_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def parse_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    matches = _NUMBER.findall(value.replace("$", ""))
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


# Seeded word-problem templates: (text, chain builder). Each builder returns the calls and answer.
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Liam"]
_ITEMS = ["apples", "pencils", "stickers", "books", "marbles", "cookies", "cards", "shells"]


def _generated_problem(rng: random.Random, index: int) -> Problem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, n, k, g = rng.randint(5, 40), rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 20)
        q = (f"{name} has {a} {item}. {name} buys {n} packs with {k} {item} in each pack, then gives "
             f"away {g} {item}. How many {item} does {name} have now?")
        plan = [("multiply", n, k), ("add", a, None), ("subtract", None, g)]
    elif kind == 1:
        per, days, extra = rng.randint(2, 15), rng.randint(3, 10), rng.randint(1, 30)
        q = (f"{name} collects {per} {item} every day for {days} days and then finds {extra} more. "
             f"How many {item} did {name} collect in total?")
        plan = [("multiply", per, days), ("add", None, extra)]
    elif kind == 2:
        groups, size, left = rng.randint(2, 9), rng.randint(2, 12), rng.randint(0, 9)
        total = groups * size + left
        q = (f"{name} shares {total} {item} equally among {groups} friends after keeping {left} "
             f"for later. How many {item} does each friend get?")
        plan = [("subtract", total, left), ("divide", None, groups)]
    else:
        price, count, paid = rng.randint(2, 20), rng.randint(2, 8), 0
        paid = price * count + rng.randint(1, 50)
        q = (f"{name} buys {count} {item} at ${price} each and pays with ${paid}. How many dollars "
             f"of change does {name} get?")
        plan = [("multiply", price, count), ("subtract", paid, None)]
    steps: list[list[Call]] = []
    value: float | None = None
    for op, x, y in plan:
        a_val = value if x is None else x
        b_val = value if y is None else y
        if x is not None and y is None and op in ("add",):
            a_val, b_val = value, x
        args = {"a": a_val, "b": b_val}
        steps.append([Call(name=op, args=args)])
        value = _FUNCS[op](**args)
    steps.append([Call(name="final_answer", args={"answer": value})])
    return Problem(id=f"math-gen-{index}", task="math", source="generated", question=q, answer=value,
                   gold_chain=steps)


class MathTask(Task):
    """`math` (generated problems), `math:gsm8k` (GSM8K test + train files)."""

    name = "math"
    max_steps = 10
    max_new_tokens = 48
    instructions = ("Solve the math word problem step by step with the calculator functions. Call one "
                    "function per step and use its result. When you have the number, call final_answer.")

    def load(self, *, split=None, limit=None, seed: int = 0) -> list[Problem]:
        source = self.source or "generated"
        if source == "generated":
            rng = random.Random(seed)
            problems: list[Problem] = []
            i = 0
            want = limit or 1000
            while len(problems) < want:
                p = _generated_problem(rng, i)
                i += 1
                if split is None or p.split == split:
                    problems.append(p)
            return problems
        if source != "gsm8k":
            raise DataError(f"unknown math source `{source}`: use `math` or `math:gsm8k`")
        problems = []
        for fname in ("test.jsonl", "train.jsonl"):
            path = find_data_file(f"gsm8k/{fname}", self.data_dir,
                                  hub_hint="datasets.load_dataset('openai/gsm8k', 'main')")
            for lineno, row in read_json_records(path):
                where = f"{path}:{lineno}"
                solution = require(row, "answer", where)
                if "####" not in solution:
                    raise DataError(f"{where}: field `answer` has no `####` final line")
                gold = parse_number(solution.split("####")[-1])
                if gold is None:
                    raise DataError(f"{where}: field `answer` has no number after `####`")
                pid = f"gsm8k-{fname.split('.')[0]}-{lineno}"
                problems.append(Problem(id=pid, task="math", source="gsm8k", question=require(row, "question", where),
                                        answer=gold, gold_chain=gsm8k_gold_chain(solution, gold),
                                        fixed_split="test" if fname == "test.jsonl" else "train"))
        return self._filter(problems, split, limit)

    def tools_for(self, problem):
        return calculator_tools()

    def verify(self, problem, *, final_answer, calls) -> Verdict:
        got = parse_number(final_answer)
        if got is None:
            return Verdict(success=False, reason="no numeric final answer")
        gold = float(problem.answer)
        if abs(got - gold) <= 1e-4 * max(1.0, abs(gold)):
            return Verdict(success=True, reason="correct answer")
        return Verdict(success=False, reason=f"wrong answer: {_num(got)} (gold {_num(gold)})")

    def examples(self) -> list[WorkedExample]:
        return [WorkedExample(
            question="A shop sells 3 boxes of 12 eggs and 5 loose eggs. How many eggs is that?",
            steps=[('{"name": "multiply", "arguments": {"a": 3, "b": 12}}', "36"),
                   ('{"name": "add", "arguments": {"a": 36, "b": 5}}', "41"),
                   ('{"name": "final_answer", "arguments": {"answer": 41}}', "")])]
