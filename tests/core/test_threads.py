"""The CPU thread policy: a default that never oversubscribes a loaded machine, explicit choices win."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medidiff.core.threads import SPIN_COUNT, default_threads, others_running


@pytest.fixture
def no_thread_env(monkeypatch):
    for name in ("MEDIDIFF_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("cores, load, expected", [(2, 0.3, 2), (2, 1.0, 1), (2, 1.6, 1), (2, 5.0, 1), (8, 2.2, 6), (1, 0.0, 1)])
def test_default_uses_the_cores_that_are_free(no_thread_env, cores, load, expected):
    assert default_threads(cores=cores, load=load) == expected


def test_an_explicit_choice_wins_over_the_load(monkeypatch):
    monkeypatch.setenv("MEDIDIFF_THREADS", "3")
    assert default_threads(cores=2, load=9.0) == 3
    monkeypatch.setenv("MEDIDIFF_THREADS", "not-a-number")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads(cores=8, load=0.0) == 1


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDIDIFF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MEDIDIFF_THREADS_BY_POLICY")}
    env.update(extra)
    return env


_PROBE = """
import json, numpy as np, torch
from medidiff.core.threads import default_threads
from medidiff.io import Scan
from medidiff.tasks.denoise import denoise
before = torch.get_num_threads()
expected = default_threads()
seen = []
class Spy(torch.nn.Module):
    def forward(self, x):
        seen.append(torch.get_num_threads())
        return x
from medidiff.model_store.registry import resolve_model
model = resolve_model("mr2d")
from medidiff.builtin.sample_scans import mr_sample
scan = mr_sample()
scan = Scan(scan.array[3], scan.spacing[1:], scan.affine, "MR", {})
handle = model.network.register_forward_hook(lambda m, i, o: seen.append(torch.get_num_threads()))
denoise(model, scan, device="cpu", noise="gaussian", sigma=20.0)
print(json.dumps({"before": before, "expected": expected, "seen": sorted(set(seen))}))
"""


def test_a_task_runs_with_the_policy_not_torchs_default():
    # MEDIDIFF_THREADS=1 with OMP_NUM_THREADS unset: torch starts with one thread per core,
    # and the task must still run its network calls with the one thread asked for
    out = subprocess.run([sys.executable, "-c", _PROBE], env=_clean_env(MEDIDIFF_THREADS="1"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["expected"] == 1
    assert got["seen"] == [1], got


def test_cli_threads_option_sets_the_environment_before_torch_loads():
    code = ("import os, sys; from medidiff.cli import main\n"
            "try:\n    main(['--threads', '1', 'models'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ['OMP_NUM_THREADS'], os.environ['MEDIDIFF_THREADS'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].split()[:2] == ["1", "1"]


def test_importing_medidiff_bounds_openmp_spinning_before_torch_loads():
    code = "import os, medidiff, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [SPIN_COUNT, "None"], out.stderr
    # a user's own wait policy is kept (and no spin count is added to it), and after torch is
    # loaded nothing is changed behind their back
    mine = subprocess.run([sys.executable, "-c", code], env=_clean_env(OMP_WAIT_POLICY="PASSIVE"), capture_output=True, text=True, timeout=120)
    assert mine.stdout.split() == ["None", "PASSIVE"]
    late = subprocess.run([sys.executable, "-c", "import os, torch, medidiff; print(os.environ.get('GOMP_SPINCOUNT'))"],
                          env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert late.stdout.strip() == "None"


def _loadavg(tmp_path, running: int):
    f = tmp_path / f"loadavg-{running}"
    f.write_text(f"0.50 0.60 0.70 {running}/321 4242\n")
    return f


def test_the_load_is_what_is_runnable_now_not_the_last_minute(no_thread_env, tmp_path):
    # /proc/loadavg's running count includes the reader: 1 running means nobody else wants a core
    idle, busy = _loadavg(tmp_path, 1), _loadavg(tmp_path, 7)
    assert others_running(reads=3, interval=0, path=str(idle)) == 0
    assert others_running(reads=3, interval=0, path=str(busy)) == 6
    assert default_threads(cores=2, load=others_running(reads=1, path=str(idle))) == 2
    assert default_threads(cores=2, load=others_running(reads=1, path=str(busy))) == 1
    assert others_running(path=str(tmp_path / "missing")) is None


def test_cli_start_up_picks_the_threads_and_the_bounded_spin_before_torch():
    code = ("import os, sys; from medidiff.core.threads import prepare_environment\n"
            "n = prepare_environment()\n"
            "print(n, os.environ['OMP_NUM_THREADS'], os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    n, omp, spin, torch_loaded = out.stdout.split()
    assert n == omp and 1 <= int(n) <= os.cpu_count()
    assert spin == SPIN_COUNT and torch_loaded == "False"


_GOVERNOR = """
import os, sys, torch
from medidiff.core.threads import ThreadGovernor
path = sys.argv[1]
def running(n):
    with open(path, "w") as f:
        f.write(f"1.0 1.0 1.0 {n}/100 42\\n")
torch.set_num_threads(2)
gov = ThreadGovernor(every_s=0, loadavg=path)
running(1 + 6)               # six other jobs start: one thread
first = gov(), torch.get_num_threads()
running(1)                   # they end: both cores again
second = gov(), torch.get_num_threads()
print(first, second, gov.active)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_a_long_run_follows_the_load_only_where_the_policy_chose(tmp_path):
    loadavg = str(tmp_path / "loadavg")
    chosen = subprocess.run([sys.executable, "-c", _GOVERNOR, loadavg], capture_output=True, text=True, timeout=120,
                            env=_clean_env(MEDIDIFF_THREADS_BY_POLICY="1", MEDIDIFF_THREADS="2"))
    assert chosen.stdout.split("\n")[0] == "(1, 1) (2, 2) True", chosen.stderr
    # the user's own choice is never changed
    mine = subprocess.run([sys.executable, "-c", _GOVERNOR, loadavg], capture_output=True, text=True, timeout=120,
                          env=_clean_env(MEDIDIFF_THREADS="2"))
    assert mine.stdout.split("\n")[0] == "(None, 2) (None, 2) False", mine.stderr
    # and the CLI start-up marks only its own choices
    probe = ("import os; from medidiff.core.threads import prepare_environment, POLICY_MARK\n"
             "prepare_environment(); a = os.environ.get(POLICY_MARK)\n"
             "prepare_environment(1); print(a, os.environ.get(POLICY_MARK))")
    marks = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=_clean_env())
    assert marks.stdout.split() == ["1", "None"], marks.stderr
