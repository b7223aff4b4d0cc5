"""A collection by folder or by BEIR name: named BEIR datasets download once into the cache.

``resolve_collection("../shared/data/scifact")`` returns the folder; ``resolve_collection("scifact")`` (no such
folder) downloads https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip into
``<cache>/datasets/scifact`` once and returns that folder.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..common.errors import DataError
from ..common.models import cache_dir
from .data import corpus_file

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")


def datasets_dir() -> Path:
    return cache_dir() / "datasets"


def resolve_collection(spec: str | Path) -> Path:
    """An existing collection folder, else a BEIR dataset name fetched into the cache (once)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        corpus_file(path)  # a clear error when the folder is not a collection
        return path
    name = str(spec)
    if not _NAME.fullmatch(name):
        raise DataError(f"{spec}: no such folder; pass a BEIR-layout folder or a BEIR dataset name such as scifact")
    target = datasets_dir() / name
    if target.is_dir():
        return target
    return fetch_beir(name, target)


def fetch_beir(name: str, target: Path, *, timeout: float = 60.0) -> Path:
    """Download and unpack BEIR's ``{name}.zip`` into ``target``."""
    url = BEIR_URL.format(name=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        archive = staging / f"{name}.zip"
        logger.info("downloading %s (once) into %s", url, target)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except urllib.error.HTTPError as exc:
            raise DataError(f"{url}: HTTP {exc.code}; is {name!r} a BEIR dataset name (e.g. scifact, nfcorpus)?") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(f"could not download {url} ({exc}); without internet, pass a local BEIR-layout folder "
                            "with --data PATH (e.g. ../shared/data/scifact)") from None
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging / "unpacked")
        unpacked = staging / "unpacked" / name
        corpus_file(unpacked)
        unpacked.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
