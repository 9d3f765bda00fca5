"""Overlay environments (bitsandbytes, and peft / transformers / accelerate as companions): built
once, reused, verified, safe to build in parallel, and versions that cannot work here refused in
one sentence."""
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from src import envs
from src.errors import ConfigError
from tests.conftest import ROOT

NEW = "0.50.2"  # not the installed version (0.48.2), so it needs an overlay


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("envs-cache")


@pytest.mark.system
def test_overlay_is_built_once_reused_and_imports_its_own_version(fresh_cache):
    assert envs.installed_bnb() != NEW
    python = envs.ensure(NEW, cache_dir=fresh_cache, log=lambda _: None)
    env_dir = fresh_cache / "envs" / f"bnb-{NEW}"
    assert python == env_dir / "bin" / "python" and (env_dir / envs.READY).exists()
    assert not list((fresh_cache / "envs").glob("*.tmp*"))  # built aside, renamed into place
    probe = "import bitsandbytes, torch, transformers; print(bitsandbytes.__version__, bitsandbytes.__file__, torch.__file__)"
    version, bnb_file, torch_file = subprocess.check_output([str(python), "-c", probe], text=True).split()[-3:]
    assert version == NEW and bnb_file.startswith(str(env_dir))  # the overlay's bitsandbytes shadows the project's
    assert torch_file.startswith(sys.prefix)  # everything else comes from the project venv
    started = time.perf_counter()
    assert envs.ensure(NEW, cache_dir=fresh_cache, log=pytest.fail) == python  # reused: no second build
    assert time.perf_counter() - started < 0.5
    assert [(row["name"], row["ready"]) for row in envs.list_envs(fresh_cache)] == [(f"bnb-{NEW}", True)]


@pytest.mark.system
def test_two_parallel_builds_of_one_new_version_build_it_once(tmp_path):
    command = [sys.executable, "-m", "src.envs", "--cache-dir", str(tmp_path), "ensure", NEW]
    procs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert sum(out.count("building the bitsandbytes") for out in outputs) == 1
    assert len({out.strip().splitlines()[-1] for out in outputs}) == 1  # both got the same python
    assert [p.name for p in (tmp_path / "envs").iterdir() if p.is_dir()] == [f"bnb-{NEW}"]
    assert envs.clean(tmp_path) == [f"bnb-{NEW}", f"bnb-{NEW}.lock"] and envs.list_envs(tmp_path) == []


def bnb(version, **companions):
    return OmegaConf.create({"version": version, "companions": companions})


@pytest.mark.parametrize("request_, device, sentence", [
    (bnb("0.45.5"), "cpu", "bnb=0.45.5 has no CPU kernels (CPU support starts at 0.46); use bnb=0.46.1 or newer, "
                           "or run on a CUDA GPU."),
    (bnb("0.46.0"), "cpu", "bnb=0.46.0 is refused by transformers"),
    (bnb("0.45.5"), "cuda", "which needs bitsandbytes >= 0.46.1; use bnb=0.46.1 or newer."),
    (bnb("0.41.1", transformers="4.31.0"), "cuda", "pins transformers 4.31.0, but dropsweep's training code needs "
                                                   "transformers 5"),
    (bnb("latest"), "cpu", "bnb.version=latest is not a version number"),
    (bnb(0.5), "cpu", "bnb.version=0.5 was read as a number; quote it"),
])
def test_a_version_that_cannot_work_here_is_refused_in_one_sentence(request_, device, sentence):
    with pytest.raises(ConfigError) as caught:
        envs.check_request(request_, device)
    assert sentence in str(caught.value) and str(caught.value).count(". ") == 0


def test_supported_release_lines_pass_the_checks_and_legacy_stack_composes():
    from tests.conftest import compose_config

    for line in envs.RELEASE_LINES:
        cfg = compose_config([f"bnb={line}"])
        envs.check_request(cfg.bnb, "cpu")
        assert envs.needs_overlay(cfg.bnb) == (line != envs.installed_bnb())
    legacy = compose_config(["bnb=legacy_0.41"]).bnb
    assert envs.requested(legacy) == ("0.41.1", {"transformers": "4.31.0", "peft": "0.4.0", "accelerate": "0.21.0",
                                                 "tokenizers": "0.13.3"})
    with pytest.raises(ConfigError, match="no CPU kernels"):
        envs.check_request(legacy, "cpu")


@pytest.mark.system
def test_an_unpublished_version_fails_with_the_installers_reason(tmp_path):
    with pytest.raises(ConfigError, match=r"bnb=0\.99\.1 could not be installed \(.*no version of bitsandbytes"):
        envs.ensure("0.99.1", cache_dir=tmp_path, log=lambda _: None)
    assert envs.list_envs(tmp_path) == []  # nothing half-built left looking ready


def test_companion_only_requests_name_their_overlay_and_refuse_an_old_transformers():
    assert envs.needs_overlay(bnb("installed", peft="0.20.0")) and not envs.needs_overlay(bnb("installed"))
    from importlib import metadata

    assert not envs.needs_overlay(bnb("installed", peft=metadata.version("peft")))  # already what is installed
    assert envs.env_name("installed", {"peft": "0.20.0"}) == "peft-0.20.0"
    assert envs.env_name("0.50.2", {}) == "bnb-0.50.2" and envs.label("installed", {"peft": "0.20.0"}) == "peft=0.20.0"
    with pytest.raises(ConfigError) as caught:
        envs.check_request(bnb("installed", transformers="4.31.0"), "cpu")
    assert str(caught.value).startswith("transformers=4.31.0 is older than dropsweep's training code accepts")
    with pytest.raises(ConfigError, match="bnb.companions.peft=latest is not a version number"):
        envs.check_request(bnb("installed", peft="latest"), "cpu")


@pytest.mark.slow
@pytest.mark.system
def test_a_peft_overlay_holds_only_peft_and_shares_the_installed_bitsandbytes(fresh_cache):
    python = envs.ensure("installed", {"peft": "0.20.0"}, cache_dir=fresh_cache, log=lambda _: None)
    env_dir = fresh_cache / "envs" / "peft-0.20.0"
    assert python == env_dir / "bin" / "python" and (env_dir / envs.READY).exists()
    probe = "import peft, bitsandbytes; print(peft.__version__, peft.__file__, bitsandbytes.__version__, bitsandbytes.__file__)"
    peft_version, peft_file, bnb_version, bnb_file = subprocess.check_output([str(python), "-c", probe], text=True).split()[-4:]
    assert (peft_version, bnb_version) == ("0.20.0", envs.installed_bnb())
    assert peft_file.startswith(str(env_dir)) and bnb_file.startswith(sys.prefix)


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.parametrize("pins, sentence", [
    ({"transformers": "4.57.1"}, "transformers=4.57.1 cannot run here: transformers requires huggingface-hub<1.0,"
                                 ">=0.34.0, this environment has huggingface-hub "),
    ({"peft": "0.17.0"}, "peft=0.17.0 installed but peft cannot be imported here (ImportError: cannot import name "
                         "'HybridCache' from 'transformers'"),
])
def test_a_release_that_cannot_run_with_this_environment_is_refused_and_not_kept(tmp_path, pins, sentence):
    with pytest.raises(ConfigError) as caught:
        envs.ensure("installed", pins, cache_dir=tmp_path, log=lambda _: None)
    message = str(caught.value)
    assert message.startswith(sentence) and "; pick another release" in message and message.endswith(".")
    assert envs.list_envs(tmp_path) == []  # nothing half-built left looking ready
