"""``atomic_outputs``: a command's outputs appear together or not at all (issue 17). Real files, real faults."""

from __future__ import annotations

import os

import pytest

from medidiff.errors import OutputError
from medidiff.io.atomic import atomic_outputs


def _tree(folder) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too): file bytes, or None for a folder."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def test_all_outputs_appear_together_with_their_names(tmp_path):
    a, b, d = tmp_path / "a.txt", tmp_path / "sub" / "new" / "b.txt", tmp_path / "d"
    with atomic_outputs([a, b, d], folders=[d]) as staged:
        assert staged[a].name == "a.txt" and staged[a].parent != tmp_path  # same name, private folder
        assert staged[d].is_dir() and not d.exists()
        staged[a].write_text("A")
        staged[b].write_text("B")
        (staged[d] / "x").write_text("X")
        assert not a.exists() and not b.exists()  # nothing visible before the end
    assert a.read_text() == "A" and b.read_text() == "B" and (d / "x").read_text() == "X"
    assert _tree(tmp_path).keys() == {"a.txt", "sub", "sub/new", "sub/new/b.txt", "d", "d/x"}  # no temporary left


def test_error_inside_the_block_commits_nothing_and_removes_made_folders(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "made" / "b.txt"
    with pytest.raises(RuntimeError):
        with atomic_outputs([a, b]) as staged:
            staged[a].write_text("A")
            staged[b].write_text("B")
            raise RuntimeError("the third writer failed")
    assert list(tmp_path.iterdir()) == []  # not a, not b, not the parent made for b, no temporary


def test_overwrite_failure_restores_the_old_outputs_byte_for_byte(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b"
    a.write_bytes(b"old a")
    b.mkdir()
    (b / "old").write_bytes(b"old b")
    before = _tree(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with atomic_outputs([a, b], overwrite=True, folders=[b]) as staged:
            staged[a].write_bytes(b"new a")
            raise KeyboardInterrupt
    assert _tree(tmp_path) == before


def test_failure_while_committing_the_second_of_three_rolls_back_the_first(tmp_path):
    """A real commit-time fault: another program creates the 2nd output while the command runs.
    The 1st is a folder output (as in folder mode): folders commit as one set with the files."""
    a, b, c = (tmp_path / n for n in ("a_folder", "b.nii.gz", "c.png"))
    with pytest.raises(OutputError) as info:
        with atomic_outputs([a, b, c], folders=[a]) as staged:
            (staged[a] / "scan1.nii.gz").write_bytes(b"1")
            for p in (b, c):
                staged[p].write_bytes(p.name.encode())
            b.write_bytes(b"someone else's")  # after the checks, before the commit
    assert str(b) in str(info.value) and "\n" not in str(info.value)
    assert not a.exists() and not c.exists()  # the 1st had been placed: taken back; the 3rd never placed
    assert b.read_bytes() == b"someone else's"  # not ours: left alone
    assert _tree(tmp_path).keys() == {"b.nii.gz"}


def test_failed_commit_with_overwrite_restores_the_first_and_keeps_the_rest(tmp_path):
    """With --overwrite, a rename that fails mid-commit puts the old 1st output back and leaves the
    old 2nd and 3rd untouched. The fault is the kernel's: the 2nd lies so deep that its staged path
    fits in PATH_MAX (4096) but the place its old version is moved aside to does not (ENAMETOOLONG)."""
    deep = tmp_path
    while len(str(deep)) < 3850:
        deep = deep / ("d" * min(200, 3850 - len(str(deep)) - 1))
    deep.mkdir(parents=True)
    stage = len(str(deep)) + 1 + len(".medidiff-outputs.XXXXXXXX.part")
    a, b, c = tmp_path / "a.txt", deep / ("b" * (4087 - stage)), tmp_path / "c.txt"
    for p in (a, b, c):
        p.write_bytes(b"old")
    before = _tree(tmp_path)
    with pytest.raises(OutputError, match="name too long"):
        with atomic_outputs([a, b, c], overwrite=True) as staged:
            assert len(str(staged[b])) < 4096 <= len(str(staged[b])) + len("/.old.XXXXXXXX")
            for p in (a, b, c):
                staged[p].write_bytes(b"new")
    assert _tree(tmp_path) == before


def test_clashes_and_existing_outputs_are_refused_before_anything(tmp_path):
    src = tmp_path / "in.txt"
    src.write_bytes(b"input")
    (tmp_path / "exists.txt").write_bytes(b"x")
    for outputs in ([tmp_path / "o.txt", src], [tmp_path / "o.txt", tmp_path / "o.txt"], [tmp_path / "exists.txt"]):
        with pytest.raises(OutputError):
            with atomic_outputs(outputs, inputs=[src]):
                pytest.fail("the block must not run")
    assert _tree(tmp_path).keys() == {"in.txt", "exists.txt"}


def test_a_rerun_after_a_failure_succeeds(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    with pytest.raises(OutputError, match=r"b\.txt: cannot be written here \(No space left on device\)"):
        with atomic_outputs([a, b]) as staged:
            staged[a].write_text("A")
            raise OSError(28, "No space left on device", str(staged[b]))
    with atomic_outputs([a, b]) as staged:
        staged[a].write_text("A")
        staged[b].write_text("B")
    assert a.read_text() + b.read_text() == "AB"


def test_atomic_dir_gives_the_old_folder_back_when_the_swap_fails(tmp_path):
    """``atomic_dir`` (one folder, e.g. a re-saved model) moves the old folder aside before the swap;
    when the swap fails (here: the temporary folder was deleted meanwhile) the old one comes back."""
    from medidiff.io.atomic import atomic_dir

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(b"{}")
    before = _tree(tmp_path)
    with pytest.raises(OutputError, match="model"):
        with atomic_dir(model, overwrite=True) as tmp:
            (tmp / "config.json").write_bytes(b"new")
            import shutil

            shutil.rmtree(tmp)
    assert _tree(tmp_path) == before
