"""Version bisection: a real, short bisection of bitsandbytes on the tiny model (each probe a job of
one sweep dir, resumable, reported), and the one-sentence refusals of input it cannot start from.
Tests that read the package index or install from it are `system`; those that train are `slow` too."""
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from src.bisect import verdicts
from src.bisect.releases import BisectError
from src.bisect.search import read_state
from tests.conftest import ROOT, read_summary, run_cli

# GPT-NeoX's biased linears make bitsandbytes 0.49.0-0.50.2 raise an in-place error at the first
# backward after an eval pass on CPUs with avx512_bf16; 0.48.2 trains.
TINY = ["model=tiny_neox", "quant=nf4", "train.max_steps=6", "train.eval_every=2", "logger=disk", "threads=1",
        "device=cpu", "train.generation.max_new_tokens=0"]
FIRST_BAD = "0.49.0"
CANDIDATES = ["0.48.2", "0.49.0", "0.49.1", "0.49.2", "0.50.0", "0.50.1", "0.50.2"]


def bisect(*args, timeout=900):
    return run_cli(list(args), module="src.bisect", env={"OMP_NUM_THREADS": "1"}, timeout=timeout)


def state_of(sweep_dir):
    return yaml.safe_load((sweep_dir / "bisect.yaml").read_text())


@pytest.fixture(scope="module")
def tiny_bisection(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("bisect") / "bnb"
    result = bisect("bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "--dir", str(sweep_dir), *TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir, result


@pytest.mark.slow
@pytest.mark.system
def test_a_real_bisection_names_the_first_bad_release_in_log2_probes(tiny_bisection):
    sweep_dir, result = tiny_bisection
    state = state_of(sweep_dir)
    assert state["candidates"] == CANDIDATES and state["refused"] == {}
    assert (state["outcome"], state["first_bad"], state["last_good"]) == ("found", FIRST_BAD, "0.48.2")
    assert state["answer"].startswith(f"bitsandbytes {FIRST_BAD} is the first release that behaves differently "
                                      f"from 0.48.2: the job failed (RuntimeError: a view of a leaf Variable")
    assert state["answer"] in result.stdout
    assert len(state["probes"]) <= 2 + math.ceil(math.log2(len(CANDIDATES) - 1))  # the two ends + binary search
    assert state["probes"][:2] == ["0.48.2", "0.50.2"] and FIRST_BAD in state["probes"]
    manifest = yaml.safe_load((sweep_dir / "manifest.json").read_text())  # JSON is YAML
    for k, version in enumerate(state["probes"]):  # probe k is job k of the one sweep dir
        summary = read_summary(sweep_dir / str(k))
        assert summary["bnb_version"] == version and manifest["jobs"][str(k)]["bnb_version"] == version
        assert summary["status"] == ("completed" if version == "0.48.2" else "failed")
    assert "[bisect] bitsandbytes 0.48.2: good - the reference: no drop, stall, spike or non-finite loss" in result.stdout
    report = (sweep_dir / "report.md").read_text()
    assert "## Bisection" in report and state["answer"] in report
    assert "| 0.49.1 | not needed: the search settled without it |" in report or "0.49.1" in state["probes"]
    assert (sweep_dir / "report_plots" / "bisection.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.system
def test_an_interrupted_bisection_resumes_without_training_finished_probes_again(tmp_path):
    sweep_dir = tmp_path / "bnb"
    command = [sys.executable, "-m", "src.bisect", "bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "--dir",
               str(sweep_dir), "--no-report", *TINY]
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:  # Ctrl-C once the two ends are done and probe 2 started
        state = read_state(sweep_dir) if sweep_dir.exists() else None
        if state and len(state["probes"]) == 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and f"go on later with python -m src.bisect --resume {sweep_dir}" in err, err[-2000:]
    interrupted = read_state(sweep_dir)
    assert interrupted["outcome"] is None and len(interrupted["probes"]) == 3
    kept = read_summary(sweep_dir / "0")
    assert kept["status"] == "completed"

    result = bisect("--resume", str(sweep_dir), "--no-report")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = read_state(sweep_dir)
    assert (state["outcome"], state["first_bad"]) == ("found", FIRST_BAD)
    assert state["probes"][:3] == interrupted["probes"]  # the search went on where it stopped
    assert read_summary(sweep_dir / "0")["started_at"] == kept["started_at"]  # kept, not trained again
    assert "kept (resume)" in (sweep_dir / "bisect.log").read_text()
    assert read_summary(sweep_dir / "2")["bnb_version"] == interrupted["probes"][2]


@pytest.mark.slow
@pytest.mark.system
def test_a_good_end_that_already_shows_the_anomaly_is_refused_and_leaves_nothing(tmp_path):
    sweep_dir = tmp_path / "bisect"
    result = bisect("bitsandbytes", "--good", "0.49.0", "--bad", "0.50.2", "--verdict", "fails", "--dir",
                    str(sweep_dir), *TINY)
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("dropsweep: The good end, bitsandbytes 0.49.0, already fails (the job failed (RuntimeError")
    assert line.endswith("; pick an older --good.")
    assert not sweep_dir.exists()


INDEX = pytest.mark.system  # the refusal needs the package index's list of releases


@pytest.mark.parametrize("args, sentence", [
    (["numpy", "--good", "1.0.0", "--bad", "2.0.0"],
     "numpy is not a package dropsweep can bisect; use one of bitsandbytes, peft, transformers, accelerate."),
    pytest.param(["bitsandbytes", "--good", "0.48.2", "--bad", "0.51.7"],
                 "bitsandbytes 0.51.7 does not exist on the package index; nearby releases are 0.50.0, 0.50.1, 0.50.2.",
                 marks=INDEX),
    pytest.param(["bitsandbytes", "--good", "0.48.2", "--bad", "0.48.2"],
                 "--good and --bad are both bitsandbytes 0.48.2; give two different releases.", marks=INDEX),
    pytest.param(["bitsandbytes", "--good", "0.50.2", "--bad", "0.48.2"],
                 "--good 0.50.2 is newer than --bad 0.48.2; the good end must be the older release (swap them).",
                 marks=INDEX),
    pytest.param(["bitsandbytes", "--good", "0.43.0", "--bad", "0.45.5"],
                 "no release of bitsandbytes from 0.43.0 to 0.45.5 can run here, so pick another range; the first one "
                 "says: bnb=0.43.0 has no CPU kernels", marks=INDEX),
    pytest.param(["bitsandbytes", "--good", "0.45.0", "--bad", "0.48.2"],
                 "the good end cannot run here: bnb=0.45.0 has no CPU kernels", marks=INDEX),
    (["bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "quant=nf4,int8"],
     "quant=nf4,int8 is a sweep; a bisection runs one configuration, so give one value."),
    (["bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "bnb=0.50.2"],
     "drop bnb=0.50.2 from the overrides: the bisection sets the bitsandbytes version itself."),
    (["peft", "--good", "0.20.0", "--bad", "0.21.2", "experiment=bnb_regression"],
     "the overrides sweep bnb (hydra.sweeper.params"),
    (["bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "--verdict", "louder"],
     "--verdict louder is not a verdict dropsweep knows"),
    (["bitsandbytes", "--good", "0.48.2", "--bad", "0.50.2", "quant=nf5"], "the overrides do not compose"),
])
def test_bad_input_is_refused_in_one_sentence_before_anything_is_written(tmp_path, args, sentence):
    sweep_dir = tmp_path / "bisect"
    result = bisect(*args, "--dir", str(sweep_dir), timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropsweep: ") and sentence in lines[0], result.stderr
    assert lines[0].endswith(".") and not sweep_dir.exists()


def test_verdicts_parse_what_a_user_types_and_refuse_the_rest():
    assert verdicts.parse("").kind == "findings"
    assert (verdicts.parse("stall").kind, verdicts.parse("stall").event) == ("event", "stall")
    assert verdicts.parse("grad_norm == 0").kind == "zero_grad"
    metric = verdicts.parse("eval_loss>10%")
    assert (metric.metric, metric.threshold, metric.spec) == ("eval_loss", 0.1, "eval_loss>10%")
    assert verdicts.parse("final_loss>0.05").threshold == 0.05
    small = verdicts.parse("final_loss>0.1%")
    assert small.spec == "final_loss>0.1%" and verdicts.parse(small.spec).threshold == small.threshold == 0.001
    for wrong in ("eval_loss>", "lr>10%", "stalls?"):
        with pytest.raises(BisectError, match="is not a verdict dropsweep knows"):
            verdicts.parse(wrong)


def test_the_command_line_documents_itself():
    result = bisect("--help", timeout=60)
    assert result.returncode == 0 and "--verdict VERDICT" in result.stdout and "final_loss>10%" in result.stdout


def test_the_search_halves_the_range_and_steps_around_a_release_that_cannot_run(tmp_path):
    from src.bisect.search import Probe, next_step

    releases = [f"1.0.{i}" for i in range(7)]
    state = {"package": "peft", "good": releases[0], "bad": releases[-1], "verdict": "fails", "candidates": releases,
             "refused": {"1.0.3": "peft=1.0.3 installed but peft cannot be imported here (ImportError: x); pick "
                                  "another release."}}

    def probe(version, failed):
        obs = verdicts.Observation(tmp_path, "failed" if failed else "completed", "RuntimeError: x" if failed else None)
        bad, evidence = verdicts.judge(verdicts.parse("fails"), obs, None)
        return Probe(version, 0, tmp_path, obs, bad, evidence)

    done = [probe("1.0.0", False), probe("1.0.6", True)]
    assert next_step(state, done) == "1.0.2"  # the middle, 1.0.3, cannot run: its lower neighbour (git bisect skip)
    done.append(probe("1.0.2", False))
    assert next_step(state, done) == "1.0.4"
    done.append(probe("1.0.4", True))
    answer = next_step(state, done)  # only 1.0.3 is left between good 1.0.2 and bad 1.0.4, and it cannot run
    assert (answer["outcome"], answer["first_bad"], answer["last_good"], answer["unknown"]) == \
        ("ambiguous", "1.0.4", "1.0.2", ["1.0.3"])
    assert answer["answer"].startswith("The first release that fails is one of 1.0.3, 1.0.4: 1.0.4 does (the job "
                                       "failed (RuntimeError: x))")


@pytest.mark.system
def test_pre_releases_and_yanked_releases_are_left_out_unless_asked_for():
    from src.bisect.releases import between, fetch

    transformers = fetch("transformers")
    assert any(r.version == "5.10.0" and r.yanked for r in transformers)  # yanked on the index
    plain = [r.version for r in between(transformers, "5.9.0", "5.11.0")]
    assert "5.10.0" not in plain and plain[0] == "5.9.0" and plain[-1] == "5.11.0"
    assert "5.10.0" in [r.version for r in between(transformers, "5.9.0", "5.11.0", yanked=True)]
    peft = fetch("peft")
    assert "0.18.0rc0" not in [r.version for r in between(peft, "0.17.1", "0.18.0")]
    assert "0.18.0rc0" in [r.version for r in between(peft, "0.17.1", "0.18.0", pre=True)]
