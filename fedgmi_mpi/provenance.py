"""Where a run came from: package versions, MPI library, git commit (stored in every log)."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from . import __version__


def versions() -> dict[str, str]:
    import h5py
    import mpi4py
    import numpy
    import torch

    return {"fedgmi_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
            "mpi4py": mpi4py.__version__}


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5)


def git_commit() -> str:
    """The commit of the checkout this package runs from, with "+dirty" for uncommitted changes
    to it; "unknown" for an installed copy (whatever repository happens to surround it)."""
    try:
        if _git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return "unknown"
        head = _git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = _git("diff", "--quiet", "HEAD", "--", ".").returncode != 0
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def mpi_library() -> str:
    from mpi4py import MPI

    return MPI.Get_library_version().strip().splitlines()[0]
