"""What every benchmark shares: where the collections are, Hugging Face libraries kept offline, and the machine line.

Scripts run as ``python benchmarks/X.py`` from the repository root, so benchmarks/ is ``sys.path[0]`` and
``import shared_data`` finds this file. Import it before anything that loads transformers or huggingface_hub: they
read the offline settings once, at their own import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Models come from the local cache (the embedded model, MiniLM), never the network, and tokenizers do not start
# threads of their own beside torch's. setdefault: a value the user exported wins.
OFFLINE_SETTINGS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
for _name, _value in OFFLINE_SETTINGS.items():
    os.environ.setdefault(_name, _value)

# The BEIR collections (and Spider): ../shared/data beside the repository, as the tests read them, or the folder
# $DEEPRETRIEVAL_DATA names.
DATA = Path(os.environ.get("DEEPRETRIEVAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
SPIDER = DATA / "spider"


def machine_line() -> str:
    """Load average, the cores this process may run on and, once torch is imported, its thread count.

    Timings on a shared machine mean little without the load they were taken under, so the timing benchmarks print
    this line with their figures.
    """
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch = sys.modules.get("torch")  # not imported here: a script that never loads torch stays light
    threads = f", torch threads {torch.get_num_threads()}" if torch is not None else ""
    return f"load {load}, {cores} cores{threads}"
