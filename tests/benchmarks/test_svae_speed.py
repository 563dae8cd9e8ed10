"""The speed benchmark (benchmarks/svae_speed.py): former, current and floor timed in one run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "svae_speed.py"


def test_speed_benchmark_prints_each_setting_and_the_ratios(capsys):
    spec = importlib.util.spec_from_file_location("svae_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    default = module.nb_log_prob.MAX_LARGE_SHARE
    holds = module.steps.engine_holds_parameters
    module.main(["--epochs", "1", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    for name in ("former", "registering", "current", "floor"):
        assert re.search(rf"^{name}\s.*s/epoch \d+\.\d\d", out, re.M), out
    ratio = float(re.search(r"current / floor time per epoch: (\d+\.\d+)", out).group(1))
    assert ratio > 1.0  # the fit does the floor's work and more (2.3 on 2 idle cores)
    assert re.search(r"registering / current time per epoch: \d+\.\d\d", out), out
    assert module.nb_log_prob.MAX_LARGE_SHARE == default  # the kernel setting restored
    assert module.steps.engine_holds_parameters is holds  # and the engine's registration
    assert module.fit_module.engine_holds_parameters is holds
    timed = re.search(r"realign_latents: s (\d+\.\d); a realigned fit of 150 epochs (\d+) s "
                      r"against (\d+) s for 300 epochs \(ratio (\d+\.\d\d)\)", out)
    assert timed, out
    search, realigned, plain, _ = map(float, timed.groups())
    assert search > 0 and realigned > search and plain > 0
