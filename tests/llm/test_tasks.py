"""Tasks and rewards: the arithmetic task, jsonl loading, math-verify answer checking."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.llm.tasks import (
    ArithmeticTask,
    MathDataset,
    Problem,
    bundled_dataset,
    evaluate_expression,
    load_jsonl,
    make_reward,
)


@given(st.lists(st.integers(0, 999), min_size=2, max_size=6), st.data())
def test_expression_value_matches_python(numbers, data):
    ops = data.draw(st.lists(st.sampled_from("+-*"), min_size=len(numbers) - 1, max_size=len(numbers) - 1))
    text = str(numbers[0]) + "".join(f"{o}{b}" for o, b in zip(ops, numbers[1:]))
    assert evaluate_expression(numbers, ops) == eval(text)  # noqa: S307 (digits and operators only)


def test_arithmetic_train_and_held_out_problems_are_disjoint_and_correct():
    task = ArithmeticTask(digits=1, terms=4, operations="+-*", eval_size=100, seed=3)
    held = {p.prompt for p in task.eval_problems()}
    assert len(held) == 100
    train = task.train_batch(3000)
    assert not held & {p.prompt for p in train}
    for p in train[:200]:
        assert str(eval(p.prompt[:-1])) == p.answer  # noqa: S307
        assert task.is_correct(f" {p.answer} ", p) and not task.is_correct(p.answer + "0", p)


def test_arithmetic_data_position_round_trips_through_json():
    a, b = ArithmeticTask(seed=1), ArithmeticTask(seed=1)
    a.train_batch(7)
    b.set_state(json.loads(json.dumps(a.state())))
    assert a.train_batch(5) == b.train_batch(5)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"digits": 0}, "digits"),
        ({"terms": 1}, "terms"),
        ({"operations": "/"}, "operations"),
        ({"digits": 1, "terms": 2, "eval_size": 200}, "eval_size"),
    ],
)
def test_bad_arithmetic_settings_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ArithmeticTask(**kwargs)


def test_rewards_binary_and_signed():
    assert (make_reward("binary")(True), make_reward("binary")(False)) == (1.0, 0.0)
    assert (make_reward("signed")(True), make_reward("signed")(False)) == (1.0, -1.0)
    with pytest.raises(ValueError, match="reward_values"):
        make_reward("ternary")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"id": "b", "problem": "2+2?"}', "line 2: row has no answer"),
        ('{"id": "b", "problem": "2+2?", "answer": ""}', "line 2: row has no answer"),
        ('{"id": "b", "problem": "2+2?", "answer": 4}', "line 2: row has no answer"),
        ('{"id": "b", "problem": "2+2?", "answer": "4"', "line 2: not valid JSON"),
        ('["b", "2+2?", "4"]', "line 2: a row must be a JSON object"),
    ],
)
def test_malformed_rows_are_errors_naming_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "d.jsonl", ['{"id": "a", "problem": "1+1?", "answer": "2"}', bad])
    with pytest.raises(ValueError, match=f"d.jsonl, {message}"):
        load_jsonl(path)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="nope.jsonl does not exist"):
        MathDataset(str(tmp_path / "nope.jsonl"))


def test_bundled_evaluation_sets_ship_with_the_package():
    counts = {name: len(load_jsonl(bundled_dataset(name))) for name in ("aime2024", "aime2025", "math500")}
    assert counts == {"aime2024": 30, "aime2025": 30, "math500": 500}


@pytest.fixture(scope="module")
def math500():
    return MathDataset("math500", timeout=5)


@pytest.fixture(scope="module")
def aime():
    return MathDataset("aime2024", timeout=5)


def test_every_aime_answer_is_recognised_boxed_and_wrong_ones_rejected(aime):
    for p in aime.train_batch(30):
        assert aime.is_correct(f"So the answer is \\boxed{{{p.answer}}}.", p), p.id
        assert not aime.is_correct(f"So the answer is \\boxed{{{int(p.answer) + 1}}}.", p), p.id


def test_math500_reference_answers_verify_against_themselves(math500):
    problems = math500.train_batch(500)[:120]
    hits = [math500.is_correct(f"The final answer is $\\boxed{{{p.answer}}}$", p) for p in problems]
    assert all(hits), [p.answer for p, h in zip(problems, hits) if not h]


@pytest.mark.parametrize(
    "answer, completion, expected",
    [
        ("\\frac{1}{2}", "the answer is \\boxed{0.5}", True),
        ("0.5", "so we get $\\boxed{\\frac{1}{2}}$", True),
        ("\\frac{14}{3}", "\\boxed{\\dfrac{14}{3}}", True),
        ("3\\sqrt{13}", "\\boxed{\\sqrt{117}}", True),
        ("\\frac{1}{2}", "\\boxed{0.49}", False),
        ("25", "I think it is \\boxed{52}", False),
        ("25", "no final answer here", False),
    ],
)
def test_equivalent_forms_are_accepted(answer, completion, expected):
    task = MathDataset.__new__(MathDataset)
    task.timeout = 5
    assert task.is_correct(completion, Problem(id="x", prompt="", answer=answer)) is expected


def test_free_text_grading_takes_the_last_integer():
    chat = ArithmeticTask(terms=3, eval_size=20, template="What is {problem}? Answer with the number only.",
                          grading="last_number")  # fmt: skip
    plain = ArithmeticTask(terms=3, eval_size=20)
    # The template changes the prompt, not the problems: the same held-out set, the same answers.
    assert [p.id for p in chat.eval_problems()] == [p.id for p in plain.eval_problems()]
    p = chat.eval_problems()[0]
    assert (
        p.prompt == f"What is {p.id[:-1]}? Answer with the number only."
        and plain.eval_problems()[0].prompt == p.id
    )
    assert chat.is_correct(f"The sum is {p.answer}.", p)
    assert chat.is_correct(f"3 + 4 ... so the answer is {p.answer}", p)
    assert not chat.is_correct(f"{p.answer} is wrong, it is {int(p.answer) + 1}", p)
    assert chat.extract("no digits here") is None and chat.extract("it is 1,024") == "1024"
    assert chat.extract("-12") == "-12" and not plain.is_correct(f"The sum is {p.answer}.", p)


def test_bad_grading_and_template_are_named():
    with pytest.raises(ValueError, match="grading must be one of"):
        ArithmeticTask(grading="fuzzy")
    with pytest.raises(ValueError, match="template must contain"):
        ArithmeticTask(template="What is it?")
