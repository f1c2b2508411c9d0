"""Where a measurement came from: command, commit, library versions and machine."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["provenance", "write_results"]


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _command() -> str:
    """The command line as typed: ``python -m pkg ...``, ``python script.py ...`` or ``console-script ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m
        head = "python -m " + spec.name.removesuffix(".__main__")
    elif sys.argv[0].endswith(".py"):
        head = "python " + sys.argv[0]
    else:
        head = Path(sys.argv[0]).name
    return " ".join([head] + sys.argv[1:])


def provenance() -> dict:
    """Command line, git commit, versions and machine of the current process."""
    import torch

    from . import __version__

    return {
        "command": _command(),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torchcfm_local": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def write_results(directory: "str | os.PathLike", name: str, results: dict, table: str) -> tuple[Path, Path]:
    """Write ``name.json`` (results + provenance) and ``name.md`` (table + provenance) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps({"provenance": prov, "results": results}, indent=2, default=float) + "\n")
    md_path = directory / f"{name}.md"
    md_path.write_text(
        f"{table}\n\nCommand: `{prov['command']}`  \nCommit: `{prov['commit']}`  \n"
        f"Date: {prov['date']}  \nMachine: {prov['machine']['platform']}, {prov['machine']['cpu_count']} CPUs, "
        f"torch {prov['torch']} ({prov['machine']['torch_threads']} threads), GPU: {prov['machine']['cuda']}\n"
    )
    return json_path, md_path
