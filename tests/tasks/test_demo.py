"""The quickstart runs end to end on CPU and its report shows what it claims."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_quick_writes_report_with_real_improvements(tmp_path):
    from medidiff.tasks.demo import demo

    out = tmp_path / "demo"
    result = demo(out, quick=True, device="cpu")
    html = (out / "index.html").read_text()
    for png in ("mr_denoise.png", "cell_denoise.png", "generated.png", "anomaly.png"):
        assert (out / png).stat().st_size > 1000
        assert png in html
    assert "medidiff denoise mr2d" in html  # the command to do it by hand
    # the "by hand" commands name the demo folder itself (they work from any folder): every
    # input they name exists there, and no output they name would clash with a demo file
    import html as html_lib
    import re
    import shlex

    commands = [html_lib.unescape(c) for c in re.findall(r"<pre>(medidiff [^<]+)</pre>", html)]
    assert len(commands) == 4, commands
    for command in commands:
        paths = [Path(t) for t in shlex.split(command) if t.startswith(str(out))]
        assert paths, command
        for path in paths:
            assert path.exists() != ("by_hand" in path.name), (command, path)
    n = result.numbers
    assert n["mr_psnr_denoised"] > n["mr_psnr_noisy"] + 1.0
    assert n["cell_psnr_denoised"] > n["cell_psnr_noisy"] + 1.0
    assert abs(n["mr_sigma_estimated"] - n["mr_sigma_true"]) < 0.1 * n["mr_sigma_true"], n  # benchmark: ~3% off
    assert n["anomaly_score_lesion"] > n["anomaly_score_healthy"]
    assert n["anomaly_voxel_auroc"] > 0.7


def test_demo_refuses_existing_output(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = subprocess.run([sys.executable, "-m", "medidiff", "demo", "--quick", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
