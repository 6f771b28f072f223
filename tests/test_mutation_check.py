"""The mutation benchmark's list stays in step with the code (the mutants themselves run in
benchmarks/mutation_check.py, not here)."""
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import mutation_check  # noqa: E402


@pytest.mark.parametrize("mutant", mutation_check.MUTANTS, ids=lambda m: m.name)
def test_each_snippet_applies_once_and_compiles(mutant):
    with open(os.path.join(ROOT, mutant.path)) as f:
        text = f.read()
    mutated = mutation_check.mutated_text(text, mutant)
    assert mutated != text
    compile(mutated, mutant.path, "exec")
    assert mutation_check.existing_tests(ROOT, mutant.tests), f"{mutant.name}: no test file exists"


def test_list_is_large_and_names_are_unique():
    names = [m.name for m in mutation_check.MUTANTS]
    assert len(names) >= 25 and len(set(names)) == len(names)


def test_snippet_that_no_longer_matches_is_named():
    m = mutation_check.Mutant("x", "f.py", "absent", "new", ("t",), "b")
    with pytest.raises(mutation_check.SnippetError, match="x: snippet occurs 0 times in f.py"):
        mutation_check.mutated_text("present", m)


def test_scratch_copy_is_mutated_and_the_tree_is_not(tmp_path):
    m = mutation_check.MUTANTS[0]
    root = mutation_check.scratch_copy(ROOT, str(tmp_path / "repo"))
    mutation_check.apply(root, m)
    with open(os.path.join(root, m.path)) as f:
        assert m.new in f.read()
    with open(os.path.join(ROOT, m.path)) as f:
        assert m.old in f.read()
