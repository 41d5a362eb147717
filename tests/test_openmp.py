"""openmp.rest_threads: torch's idle OpenMP threads stop at once, and torch still computes the same."""

import json
import subprocess
import sys

import pytest

from clipwidgets import openmp

CHILD = """
import json, torch
from clipwidgets import openmp

def threads():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])

torch.set_num_threads(2)
a = torch.arange(250_000, dtype=torch.float32).reshape(500, 500) / 250_000
before = (a @ a).sum().item()
with_pool = threads()
rested = openmp.rest_threads()
after_rest = threads()
again = (a @ a).sum().item()
runtimes = openmp.loaded_libraries(openmp._RUNTIME)
print(json.dumps({"runtimes": runtimes, "rested": rested, "with_pool": with_pool,
                  "after_rest": after_rest, "same": before == again}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the runtime in /proc/self/maps")
def test_rest_threads_ends_the_spinning_pool_and_torch_still_computes_the_same():
    result = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                                       check=True).stdout)
    assert result["runtimes"], "torch's OpenMP runtime was not found among the loaded libraries"
    assert result["rested"]
    if any("libgomp" in path for path in result["runtimes"]):  # GNU OpenMP ends the pool's threads
        assert result["after_rest"] < result["with_pool"]
    assert result["same"]


def test_rest_threads_is_a_no_op_without_an_openmp_runtime(monkeypatch):
    monkeypatch.setattr(openmp, "loaded_libraries", lambda pattern, **_: [])
    openmp._pause_function.cache_clear()
    try:
        assert openmp.rest_threads() is False
    finally:
        openmp._pause_function.cache_clear()
