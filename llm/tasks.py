"""Verifiable tasks: problems with answers, and the rewards of completions.

* :class:`ArithmeticTask`: the embedded task, integer arithmetic such as
  ``37+58=`` with the answer ``95``; ``digits`` and ``operations`` set the
  difficulty. Training and held-out problems are disjoint (a hash of the
  problem decides its split). Exact-match reward.
* :class:`MathDataset`: math problems from a jsonl file of
  ``{"id", "problem", "answer"}`` rows (AIME 2024/2025 and MATH-500 ship with
  the project), a prompt template, and answers checked with ``math-verify``
  (``\\frac{1}{2}`` equals ``0.5``), with its timeouts.

A reward is 1 for a correct completion and 0 (``reward_values="binary"``) or
-1 (``"signed"``) otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
from dataclasses import dataclass
from importlib import resources

from . import jsonl

__all__ = ["ArithmeticTask", "MathDataset", "Problem", "bundled_dataset", "load_jsonl", "make_reward"]

REWARD_VALUES = {"binary": (1.0, 0.0), "signed": (1.0, -1.0)}
#: The arithmetic prompt by default: the expression and ``=``, for a model that completes it.
ARITHMETIC_TEMPLATE = "{problem}="
#: How an arithmetic completion is graded (see :class:`ArithmeticTask`).
GRADINGS = ("exact", "last_number")
_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    """One problem: its ``id``, the ``prompt`` text the model sees, and the reference ``answer``."""

    id: str
    prompt: str
    answer: str


def make_reward(reward_values: str):
    """``(correct: bool) -> float`` for ``binary`` ({1, 0}) or ``signed`` ({1, -1}) rewards."""
    if reward_values not in REWARD_VALUES:
        raise ValueError(f"reward_values must be one of {tuple(REWARD_VALUES)}, got {reward_values!r}")
    hit, miss = REWARD_VALUES[reward_values]
    return lambda correct: hit if correct else miss


# --------------------------------------------------------------------- arithmetic


class ArithmeticTask:
    """Integer arithmetic: ``terms`` numbers below ``10**digits`` joined by operators, e.g. ``4+7+2=13``.

    ``operations`` is a string of ``+``, ``-`` and ``*`` (usual precedence);
    ``digits`` and ``terms`` set the difficulty. A tenth of all problems (by
    a hash of the text) is held out for evaluation; ``eval_size`` of them
    form the evaluation set. ``template`` turns the expression (``4+7+2``)
    into the prompt (default ``4+7+2=``; for a chat model e.g. ``What is
    {problem}? Answer with the number only.``). ``grading``: ``exact`` (the
    completion, stripped, is the answer) or ``last_number`` (the last integer
    in a free-text completion is).
    """

    name = "arithmetic"

    def __init__(
        self,
        digits: int = 1,
        terms: int = 4,
        operations: str = "+",
        eval_size: int = 200,
        seed: int = 0,
        template: str = ARITHMETIC_TEMPLATE,
        grading: str = "exact",
    ):
        if "{problem}" not in template:
            raise ValueError(f"template must contain {{problem}}, got {template!r}")
        if grading not in GRADINGS:
            raise ValueError(f"grading must be one of {GRADINGS}, got {grading!r}")
        self.template, self.grading = template, grading
        if digits < 1:
            raise ValueError(f"digits must be at least 1, got {digits}")
        if terms < 2:
            raise ValueError(f"terms must be at least 2, got {terms}")
        if not operations or set(operations) - set("+-*"):
            raise ValueError(f"operations must be a non-empty string of '+', '-', '*', got {operations!r}")
        distinct = 10 ** (digits * terms) * len(set(operations)) ** (terms - 1)
        if eval_size > distinct // 20:
            raise ValueError(
                f"eval_size {eval_size} is too large: only about {distinct // 10} of the "
                f"{distinct} problems are held out; use more digits or terms"
            )
        self.digits, self.terms, self.operations, self.seed = digits, terms, operations, seed
        self._rng = random.Random(seed)
        held = []
        rng = random.Random(seed + 1_000_003)
        seen = set()
        while len(held) < eval_size:
            p = self._draw(rng)
            if self._held_out(p.id) and p.id not in seen:
                seen.add(p.id)
                held.append(p)
        self._eval = held

    def _draw(self, rng: random.Random) -> Problem:
        hi = 10**self.digits
        numbers = [rng.randrange(hi) for _ in range(self.terms)]
        ops = [rng.choice(self.operations) for _ in range(self.terms - 1)]
        expression = str(numbers[0]) + "".join(f"{op}{b}" for op, b in zip(ops, numbers[1:]))
        return Problem(
            id=expression + "=",
            prompt=self.template.format(problem=expression),
            answer=str(evaluate_expression(numbers, ops)),
        )

    @staticmethod
    def _held_out(text: str) -> bool:
        return hashlib.sha256(text.encode()).digest()[0] % 10 == 0

    def train_batch(self, size: int) -> list[Problem]:
        """The next ``size`` training problems (never a held-out one)."""
        out = []
        while len(out) < size:
            p = self._draw(self._rng)
            if not self._held_out(p.id):
                out.append(p)
        return out

    def eval_problems(self) -> list[Problem]:
        return list(self._eval)

    def state(self) -> object:
        return self._rng.getstate()

    def set_state(self, state) -> None:
        self._rng.setstate(_as_tuple(state))

    def extract(self, completion: str) -> str | None:
        """The answer in a completion (``None`` if there is none): the stripped text (``exact``)
        or its last integer (``last_number``)."""
        if self.grading == "last_number":
            found = _INTEGER.findall(completion.replace(",", ""))
            return str(int(found[-1])) if found else None
        text = completion.strip()
        return text or None

    def is_correct(self, completion: str, problem: Problem) -> bool:
        return self.extract(completion) == problem.answer


def evaluate_expression(numbers: list[int], ops: list[str]) -> int:
    """The value of ``n0 op0 n1 op1 ...`` with ``*`` before ``+`` and ``-``."""
    terms, signs = [numbers[0]], [1]
    for op, b in zip(ops, numbers[1:]):
        if op == "*":
            terms[-1] *= b
        else:
            terms.append(b)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


def _as_tuple(state):
    """``random.Random`` states survive JSON as nested lists; ``setstate`` wants tuples."""
    if isinstance(state, list):
        return tuple(_as_tuple(s) for s in state)
    return state


# --------------------------------------------------------------------- math data


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows ``{"id", "problem", "answer"}`` (non-empty strings); errors name the file and line."""
    rows = []
    for number, row in jsonl.objects(path):
        for key in ("id", "problem", "answer"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{path}, line {number}: row has no {key} (a non-empty string is required)")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


#: Data sets shipped with the project (see ``llm/data/SOURCES.md`` for provenance and licences).
BUNDLED = {"aime2024": "aime2024.jsonl", "aime2025": "aime2025.jsonl", "math500": "math500.jsonl"}

DEFAULT_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def bundled_dataset(name: str) -> str:
    """Path of a bundled evaluation set: ``aime2024``, ``aime2025`` or ``math500``."""
    if name not in BUNDLED:
        raise ValueError(f"bundled data sets are {tuple(BUNDLED)}, got {name!r}")
    return str(resources.files("pmdlab.llm").joinpath("data", BUNDLED[name]))


class MathDataset:
    """Math problems from jsonl files with ``math-verify`` answer checking.

    ``train`` and ``eval`` are paths (or bundled names); ``template`` formats
    ``{problem}`` into the prompt; ``timeout`` bounds parsing and comparison.
    """

    name = "math"

    def __init__(
        self,
        train: str,
        eval: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        timeout: int = 5,
        eval_size: int | None = None,
        seed: int = 0,
    ):
        self.template, self.timeout = template, timeout
        self._train = [self._problem(r) for r in load_jsonl(_resolve(train))]
        held = load_jsonl(_resolve(eval)) if eval else []
        self._eval = [self._problem(r) for r in held][: eval_size or None]
        self._rng = random.Random(seed)
        self._order: list[int] = []

    def _problem(self, row: dict) -> Problem:
        return Problem(
            id=row["id"], prompt=self.template.format(problem=row["problem"]), answer=row["answer"]
        )

    def train_batch(self, size: int) -> list[Problem]:
        """The next ``size`` problems of a reshuffled pass over the training file."""
        out = []
        while len(out) < size:
            if not self._order:
                self._order = list(range(len(self._train)))
                self._rng.shuffle(self._order)
            out.append(self._train[self._order.pop()])
        return out

    def eval_problems(self) -> list[Problem]:
        return list(self._eval)

    def state(self) -> object:
        return {"rng": self._rng.getstate(), "order": list(self._order)}

    def set_state(self, state) -> None:
        self._rng.setstate(_as_tuple(state["rng"]))
        self._order = list(state["order"])

    def extract(self, completion: str) -> str | None:
        """The final answer ``math-verify`` finds in a completion (its string form), if any."""
        from math_verify import parse

        found = parse(completion, parsing_timeout=self.timeout)
        return str(found[-1]) if found else None

    def is_correct(self, completion: str, problem: Problem) -> bool:
        from math_verify import parse, verify

        gold = _parse_gold(problem.answer, self.timeout)
        pred = parse(completion, parsing_timeout=self.timeout)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=self.timeout))


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str, timeout: int):
    """A reference answer parsed once, not once per completion (every sample of a group shares it)."""
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=timeout)


def _resolve(path: str) -> str:
    if path in BUNDLED:
        return bundled_dataset(path)
    if not os.path.isfile(path):
        raise ValueError(f"data file {path} does not exist (or name a bundled set: {', '.join(BUNDLED)})")
    return path
