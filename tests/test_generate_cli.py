"""`python -m blendin.generate`: its command-line contract (docs/running.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from blendin import generate
from blendin.errors import ConfigError, PromptError

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def tiny_overrides(model_dirs, kind="cross"):
    return [
        f"pair.name=tiny_{kind}",
        f"pair.base.source={model_dirs[kind + '_base']}",
        f"pair.guidance.source={model_dirs[kind + '_guidance']}",
        "device=cpu",
    ]


def cli(args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "blendin.generate", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_prints_the_continuation_then_one_json_line(model_dirs):
    proc = cli(
        tiny_overrides(model_dirs)
        + ["method=nudging", "method.tau=0.5", "prompt=Question: What is 2+2?", "max_new_tokens=8"]
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    stats = json.loads(lines[-1])
    for key in ("n_tokens", "intervention_rate", "override_rate", "tokens_per_s"):
        assert key in stats
    assert 1 <= stats["n_tokens"] <= 8 and 0 <= stats["intervention_rate"] <= 1
    assert stats["method"] == "nudging" and stats["tau"] == 0.5
    assert stats["vocab"]["identical_tokenizers"] is False


def test_cli_error_exit_code_and_message(model_dirs):
    proc = cli(tiny_overrides(model_dirs) + ["method=blendin", "method.alpha=1.5", "max_new_tokens=4"])
    assert proc.returncode == 2
    assert "error: method.alpha=1.5 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


def composed(overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="generate", overrides=overrides)


def test_defaults_are_the_embedded_pair_and_blendin():
    cfg = composed([])
    assert cfg.pair.name == "smollm2_gemma3" and cfg.pair.base.source == "embedded:gemma-3-270m"
    assert cfg.method.name == "blendin" and cfg.method.tau == 0.4 and cfg.method.top_k == 100
    assert cfg.prompt.strip()


def test_every_method_config_builds_a_policy():
    from omegaconf import OmegaConf

    from blendin.methods import METHODS, make_policy

    for name in METHODS:
        method = OmegaConf.to_container(composed([f"method={name}"]).method)
        assert make_policy(method).name == name


def test_bad_values_fail_before_models_load(model_dirs):
    with pytest.raises(PromptError, match="the prompt is empty"):
        generate.run(composed(tiny_overrides(model_dirs) + ["prompt=' '"]))
    with pytest.raises(ConfigError, match="method.tau=-1.0 is out of range"):
        generate.run(composed(["pair.base.source=/nowhere", "method.tau=-1"]))
    with pytest.raises(ConfigError, match="max_new_tokens=0 must be a positive integer"):
        generate.run(composed(["pair.base.source=/nowhere", "max_new_tokens=0"]))
    with pytest.raises(ConfigError, match="max_new_tokens='many' must be a positive integer"):
        generate.run(composed(["pair.base.source=/nowhere", "max_new_tokens=many"]))
    with pytest.raises(MissingConfigException, match="method/nudgin"):
        composed(["method=nudgin"])
    with pytest.raises(ConfigCompositionException, match="alpha"):
        composed(["method=nudging", "method.alpha=0.5"])


def test_settings_and_methods_generate_cannot_use_are_refused_before_loading(monkeypatch):
    from blendin.pair import Pair

    monkeypatch.setattr(Pair, "model", lambda *a: pytest.fail("a model loaded"))
    with pytest.raises(ConfigError, match="blendin.generate has no setting temperature; its settings are pair"):
        generate.run(composed(["+temperature=0.7"]))  # Hydra's own hint after temperature=0.7 is refused
    with pytest.raises(
        ConfigError, match="method=forced needs each prompt.s reference.*Fix: python -m blendin.run method=forced"
    ):
        generate.run(composed(["method=forced"]))
    with pytest.raises(ConfigError, match="guidance_schedule='often'"):
        generate.run(composed(["guidance_schedule=often"]))
