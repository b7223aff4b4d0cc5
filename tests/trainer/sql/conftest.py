"""Spider's real SQLite files (../shared/data/spider), copied to a writable temp folder where a test must show that
nothing changes them (so read-only comes from our connection, not from the file's permissions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import collection_path


def spider_db(name: str) -> Path:
    return collection_path("spider") / "database" / name / f"{name}.sqlite"


@pytest.fixture(scope="session")
def spider_dir() -> Path:
    return collection_path("spider")


@pytest.fixture
def writable_copy(tmp_path):
    """A writable copy of a Spider database in its own folder: ``writable_copy("concert_singer") -> path``."""

    def copy(name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        target = folder / f"{name}.sqlite"
        shutil.copyfile(spider_db(name), target)
        target.chmod(0o644)
        return target

    return copy
