import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

# The configs read ${IRDIFF_DATA}; on a machine with the repository's sibling data folder the tests use it.
_SIBLING_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "IRDIFF_DATA" not in os.environ and _SIBLING_DATA.is_dir():
    os.environ["IRDIFF_DATA"] = str(_SIBLING_DATA)
SHARED_DATA = Path(os.environ.get("IRDIFF_DATA", _SIBLING_DATA))


def load_script(relpath: str, name: str, register: bool = False):
    """A script of the repository (``scripts/...``, ``benchmarks/...``) imported as module ``name``; ``register``
    puts it in sys.modules first (needed by dataclasses defined in it)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / relpath)
    mod = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def shared_data(name: str) -> Path:
    """A data set folder under $IRDIFF_DATA, or skip the test with a clear message when it is absent."""
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"benchmark data {p} is absent (`irdiff data fetch {name}`, or set IRDIFF_DATA)")
    return p


@pytest.fixture
def image_folder(tmp_path):
    """Six small random RGB PNGs (40x36) in a folder."""
    from irdiff.data.io import write_image

    g = torch.Generator().manual_seed(0)
    d = tmp_path / "imgs"
    for i in range(6):
        write_image(d / f"img{i}.png", torch.rand(3, 36, 40, generator=g))
    return d
