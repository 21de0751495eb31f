"""The configuration and stopping cases of the fault injection (tests/fault_config.py), one
test each: mixed rows after three profile changes, a changed data folder, build of a read-only
run folder, SIGINT and SIGTERM mid-run, and profile paths out of the project."""

from __future__ import annotations

import signal
from pathlib import Path

import fault_config as fc
import pytest


def _check(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_a_changed_profile_leaves_rows_of_one_configuration(tmp_path: Path):
    _check(fc.mixed_rows_case(tmp_path, print))


def test_changed_data_folder_says_what_changed_and_can_be_accepted(tmp_path: Path):
    _check(fc.changed_data_case(tmp_path, print))


def test_build_of_a_read_only_run_folder(tmp_path: Path):
    _check(fc.read_only_build_case(tmp_path, print))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stopping_a_run_prints_one_line_and_resumes(tmp_path: Path, sig: int):
    _check(fc.stop_case(tmp_path, sig, print))


def test_profile_paths_cannot_leave_the_project(tmp_path: Path):
    _check(fc.path_escape_case(tmp_path, print))
