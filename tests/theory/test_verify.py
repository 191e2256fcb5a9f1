"""The verification command and its table."""

import subprocess
import sys

import pytest

from pmdlab.theory import propositions, verify


def test_every_proposition_passes_its_check():
    outcomes = propositions.run(seed=0)
    failed = [(o.proposition.name, o.worst) for o in outcomes if not o.passed]
    assert not failed
    assert len(outcomes) >= 20 and all(o.instances > 0 for o in outcomes)


def test_table_and_exit_status(capsys):
    assert verify.main(["--only", "binary_table", "lambda_zero_iff_flat", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "binary_table" in out and "pass" in out and "2 of 2 propositions pass" in out


def test_a_failing_check_fails_the_command(monkeypatch, capsys):
    broken = propositions.Proposition("broken", "a claim", "nothing", 0.0, lambda rng: (1, 1.0))
    monkeypatch.setattr(propositions, "PROPOSITIONS", propositions.PROPOSITIONS + [broken])
    monkeypatch.setattr(verify, "PROPOSITIONS", propositions.PROPOSITIONS)
    assert verify.main(["--only", "broken"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "failed: broken" in out


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="unknown propositions"):
        propositions.run(names=["no_such_claim"])


def test_module_entry_point_lists_propositions():
    out = subprocess.run([sys.executable, "-m", "pmdlab.theory.verify", "--list"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "chi2_equivalence" in out and "lambda_is_kl" in out


def test_markdown_table():
    outcomes = propositions.run(names=["binary_table"])
    table = verify.format_table(outcomes, markdown=True)
    assert table.splitlines()[0].startswith("| proposition |") and "| pass |" in table


def test_markdown_table_escapes_pipes_in_cells():
    """Descriptions such as ``|sum pi - 1|`` must not split a row into extra cells."""
    outcomes = propositions.run(names=["lambert_w_form", "pmd_part_tilt"])
    for row in verify.format_table(outcomes, markdown=True).splitlines()[2:]:
        unescaped = row.replace("\\|", "")
        assert unescaped.count("|") == 7, row
