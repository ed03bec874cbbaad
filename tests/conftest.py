import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for every test that uses torch: the networks here are tiny, and on a shared
    2-core machine two spinning OpenMP threads per process made them up to 100x slower (measured); one
    thread also keeps loss trajectories reproducible. Tests that need no torch never import it."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
