"""The method registry (`blendin.methods`): one home for a method, read by every command; no import circle."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from blendin import methods
from blendin.data import data_dir
from blendin.errors import ConfigError
from blendin.methods import REGISTRY, Method, make_policy
from blendin.policies import SOURCE_BASE, SOURCE_GUIDANCE, Choice, Step

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_has_one_config_file_with_the_registry_defaults():
    files = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / "method").glob("*.yaml")}
    assert set(files) == set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert files[name] == {"name": name, **spec.params}, name


def test_every_method_builds_its_policy_and_refuses_unknown_parameters():
    for name, spec in REGISTRY.items():
        assert make_policy({"name": name}).name == name
        with pytest.raises(ConfigError, match=f"method {name} does not take method.colour; it takes"):
            make_policy({"name": name, "colour": 1})


def _imports(path: Path, package: str) -> set[str]:
    """Every module of `package` that `path` imports, at the top or inside a function."""
    found = set()
    own = f"{package}.{path.stem}" if path.stem != "__init__" else package
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import x
                base = own.rsplit(".", node.level if path.stem != "__init__" else node.level - 1)[0]
                target = f"{base}.{node.module}" if node.module else base
                names = [f"{target}.{a.name}" for a in node.names] if not node.module else []
                found.update([target, *names])
            elif node.module and node.module.split(".")[0] in ("blendin", "analysis"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in ("blendin", "analysis"))
    return found


def test_the_import_graph_has_no_circle():
    modules = {}
    for package in ("blendin", "analysis"):
        for path in (ROOT / "src" / package).glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path, package
    graph = {
        name: {m for m in _imports(path, package) if m in modules and m != name and not m.endswith("__init__")}
        for name, (path, package) in modules.items()
    }
    # packages' __init__ re-export the library's main names; a module importing them is not a circle
    graph = {k: v - {"blendin", "analysis"} for k, v in graph.items() if k not in ("blendin", "analysis")}
    assert "blendin.engine" in graph["blendin.words"] and "blendin.engine" in graph["blendin.forcing"]
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt) :] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


@dataclass(frozen=True)
class Contrarian:
    """A throwaway policy: where the base is unsure, take the guidance's token only if the two models
    disagree; elsewhere the base's."""

    tau: float
    name: str = "contrarian"

    def decide(self, step: Step) -> Choice:
        act = step.consulted & (step.guide_top_joint != step.base_top_id)
        token = torch.where(act, step.guide_top_joint, step.base_top_id)
        source = torch.where(act, SOURCE_GUIDANCE, SOURCE_BASE)
        nan = torch.full_like(step.base_top_prob, float("nan"))
        return Choice(token, act.clone(), source, nan, nan.clone())


@pytest.fixture
def contrarian(monkeypatch):
    spec = Method(
        "contrarian", "Contr.", "throwaway test method", {"tau": 0.4}, lambda c: Contrarian(tau=methods.tau(c))
    )
    monkeypatch.setitem(REGISTRY, "contrarian", spec)
    return spec


@pytest.mark.skipif(not data_dir().exists(), reason="no benchmark data directory")
def test_a_throwaway_method_runs_end_to_end_from_one_registry_entry(contrarian, model_dirs, tmp_path):
    """Registered once, the new method is checked, named, run, stored, summarised and labelled."""
    from hydra import compose, initialize_config_dir

    from analysis.labels import method_label
    from analysis.load import load_runs
    from blendin.run import execute, run_dir
    from blendin.sweep import headline

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[
                "pair.name=tiny_shared",
                f"pair.base.source={model_dirs['shared_base']}",
                f"pair.guidance.source={model_dirs['shared_guidance']}",
                "device=cpu",
                f"results_dir={tmp_path}",
                "benchmark=gsm8k",
                "benchmark.n=3",
                "benchmark.max_new_tokens=8",
                "method=nudging",  # any method's file; the name below picks the registry entry
                "method.name=contrarian",
                "method.tau=1.0",
            ],
        )
    metrics = execute(cfg)
    assert run_dir(cfg).name.startswith("contrarian-tau1.0-")
    assert metrics["method"] == "contrarian" and metrics["n_samples"] == 3
    stored = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert stored["protocol"]["intervention_unit"] == "token"
    assert headline(metrics).endswith("intervention=1.000") and method_label("contrarian") == "Contr."
    frame = load_runs(tmp_path)
    assert frame["method"].tolist() == ["contrarian"]

    with pytest.raises(ConfigError, match="method contrarian does not take method.alpha"):
        make_policy({"name": "contrarian", "alpha": 0.5})


def test_the_sweep_summary_shows_each_methods_meaningful_figure():
    from blendin.sweep import headline

    scored = {"method": "nudging", "score_name": "accuracy", "score": 0.25, "intervention_rate": 0.1}
    assert headline(scored) == "accuracy=0.250 intervention=0.100"
    probe = {"method": "probe", "score": 0.25, "intervention_rate": 0.0, "consult_rate": 0.3}
    assert headline(probe).startswith("consult_rate=0.300") and "intervention" not in headline(probe)
    sampled = {**scored, "pass_at_k": {"1": 0.25, "5": 0.6}, "majority_score": 0.3}
    assert headline(sampled) == "accuracy=0.250 pass@5=0.600 majority=0.300 intervention=0.100"
    forced = {"method": "forced", "score": 1.0, "score_name": "accuracy"}
    assert "no score" in headline(forced) and "1.000" not in headline(forced)
