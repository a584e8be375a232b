"""The Hydra configs: the paper's pairs and experiment grids compose and pass the checks; a bad
value fails before any data or model loads, with the key named; runs never share a directory or a
writer; one-model runs are reused across pairs; logger=wandb writes its offline run files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from blendin.checks import check_run_config
from blendin.errors import ConfigError, RunBusyError
from blendin.pair import Pair, pair_spec
from blendin.run import execute, run_dir
from blendin.sweep import check_job, job_overrides

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_PAIRS = {  # Figure 2: guidance -> base
    "llama1b_llama3b",
    "llama1b_llama8b",
    "llama3b_llama8b",
    "gemma1b_gemma4b",
    "gemma1b_gemma9b",
    "gemma4b_gemma9b",
    "qwen1.7b_qwen4b",
    "qwen1.7b_qwen8b",
    "qwen4b_qwen8b",
    "llama1b_gemma9b",
    "llama1b_qwen8b",
    "gemma1b_llama8b",
    "gemma1b_qwen8b",
    "qwen1.7b_llama8b",
    "qwen1.7b_gemma9b",
}
TABLE1_PAIRS = {
    "qwen1.7b_llama8b",
    "qwen1.7b_gemma9b",
    "gemma1b_llama8b",
    "llama1b_gemma9b",
    "llama1b_llama8b",
    "gemma1b_gemma9b",
}


def compose_run(*overrides, hydra_config=False):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def tiny(model_dirs, tmp_path, *overrides):
    return compose_run(
        "pair.name=tiny",
        f"pair.base.source={model_dirs['cross_base']}",
        f"pair.guidance.source={model_dirs['cross_guidance']}",
        "device=cpu",
        f"results_dir={tmp_path}",
        "benchmark.n=3",
        "benchmark.max_new_tokens=6",
        *overrides,
    )


def test_every_pair_config_is_a_valid_pair_and_the_paper_pairs_are_all_there():
    names = {p.stem for p in (CONF / "pair").glob("*.yaml")}
    assert PAPER_PAIRS | {"smollm2_gemma3"} == names
    models = set()
    for name in names:
        cfg = compose_run(f"pair={name}")
        check_run_config(cfg)
        spec = pair_spec(cfg.pair)
        assert cfg.pair.name == name and (spec.aligned is not None) == (name in PAPER_PAIRS)
        assert spec.base.prompt_format == "plain" and spec.guidance.prompt_format == "chat"
        models |= {spec.base.source, spec.guidance.source}
        if "qwen3" in spec.guidance.source.lower():  # Qwen3 answers without a <think> block
            assert spec.guidance.chat_template_kwargs == {"enable_thinking": False}
    # the paper's nine models (Llama 1B/3B/8B, Gemma 1B/4B/9B, Qwen3 1.7B/4B/8B); 3B and 4B serve as
    # guidance (instruct) and as base (pretrained)
    assert models - {"embedded:gemma-3-270m", "embedded:smollm2-135m-instruct"} == {
        "meta-llama/Llama-3.2-1B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        "meta-llama/Llama-3.2-3B",
        "meta-llama/Llama-3.1-8B",
        "google/gemma-3-1b-it",
        "google/gemma-3-4b-it",
        "google/gemma-3-4b-pt",
        "google/gemma-2-9b",
        "Qwen/Qwen3-1.7B",
        "Qwen/Qwen3-4B",
        "Qwen/Qwen3-4B-Base",
        "Qwen/Qwen3-8B-Base",
    }
    assert TABLE1_PAIRS <= PAPER_PAIRS


PAPER_GRIDS = [
    ("paper_fig2", 180),
    ("paper_fig4", 54),
    ("paper_table1", 90),
    ("paper_table2", 18),
    ("paper_table3", 12),
    ("tau_sweep", 9),
    ("alpha_sweep", 12),
    ("paper_table6", 45),
]


@pytest.mark.parametrize(
    "experiment, runs",
    [
        ("smoke", 6),
        ("embedded_overview", 42),
        ("embedded_tau_sweep", 20),
        ("embedded_rules", 28),
        ("calibration", 2),
        *PAPER_GRIDS,
        *((f"{name}_reference", runs) for name, runs in PAPER_GRIDS),
    ],
)
def test_every_experiment_grid_composes_and_passes_the_checks(experiment, runs):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
        jobs = job_overrides(cfg)
        assert len(jobs) == runs
        for overrides in jobs[:: max(1, len(jobs) // 12)]:  # a spread of jobs: composing is ~75 ms each
            check_job("config", overrides)
    if experiment == "paper_table1":
        assert {o.split("=")[1] for j in jobs for o in j if o.startswith("pair=")} == TABLE1_PAIRS


def test_the_reference_protocol_switches_every_setting_and_keeps_them_across_a_sweep():
    ours = compose_run("benchmark=xstest", "method=nudging")
    ref = compose_run("protocol=reference", "benchmark=xstest", "method=nudging_words")
    assert (ours.protocol.name, ours.base_view, ours.benchmark.subset_rule) == ("ours", "ids", "seeded")
    assert (
        ref.protocol.name,
        ref.base_view,
        ref.benchmark.subset_rule,
        list(ref.benchmark.stop),
        ref.benchmark.max_new_tokens,
    ) == ("reference", "text", "reference", [], 512)
    assert "Qwen/Qwen3-1.7B" in ref.protocol.plain_guidance
    swept = compose_run("experiment=paper_table1_reference", "benchmark=truthfulqa", "pair=qwen1.7b_llama8b")
    assert list(swept.benchmark.stop) == [] and swept.benchmark.subset_rule == "reference"
    from blendin.identity import effective_pair, run_name

    assert effective_pair(swept)["guidance"]["prompt_format"] == "plain"  # Qwen got no chat template
    assert effective_pair(compose_run("pair=qwen1.7b_llama8b"))["guidance"]["prompt_format"] == "chat"
    assert run_name(compose_run("protocol=reference", "method=nudging")) != run_name(compose_run("method=nudging"))
    assert compose_run("protocol=reference", "benchmark.stop=[X]").benchmark.stop == ["X"], "command line wins"


def test_command_line_values_win_over_an_experiment():
    cfg = compose_run("experiment=tau_sweep", "pair=smollm2_gemma3", "benchmark.n=20")
    assert (cfg.pair.name, cfg.method.name, cfg.benchmark.n) == ("smollm2_gemma3", "blendin", 20)


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.tau=-0.5", "method.tau=-0.5 is out of range"),
        ("method=blendin method.alpha=1.5", "method.alpha=1.5 is out of range"),
        ("method=blendin method.top_k=0", "method.top_k=0 must be a positive integer"),
        ("benchmark.n=0", "benchmark.n=0 must be a positive integer or 'full'"),
        ("benchmark.n=lots", "benchmark.n='lots'"),
        ("benchmark.max_new_tokens=0", "benchmark.max_new_tokens=0"),
        ("benchmark.seed=-1", "benchmark.seed=-1"),
        ("benchmark.source=web", "benchmark.source='web' must be auto, local or hub"),
        ("benchmark.stop=5", "benchmark.stop=5 must be a list"),
        ("+benchmark.shots=5", "unknown config key benchmark.shots"),
        ("+pair.base.sorce=x", "pair.base has unknown keys ['sorce']"),
        ("+pair.labl=x", "unknown config key pair.labl"),
        ("pair.name=a/b", "pair.name='a/b' must be a plain folder name"),
        ("batch_size=0", "batch_size=0 must be a positive integer"),
        ("force=maybe", "force='maybe' must be true or false"),
        ("dtype=fp8", "dtype='fp8' is not one of"),
        ("device=gpu0", "device='gpu0' is not a torch device"),
        ("method=aligned", "method=aligned needs pair.aligned"),
        ("logger=wandb logger.mode=sometimes", "logger.mode='sometimes' must be one of offline, online, disabled"),
        ("judge=openai judge.kind=carrier-pigeon", "judge.kind='carrier-pigeon'"),
        ("+model=llama-3.1-8b", "Use model@pair.base=<name>"),
        ("overlap=sometimes", "overlap='sometimes' must be auto, true or false"),
    ],
)
def test_a_bad_config_fails_before_any_model_loads_with_the_key_named(
    model_dirs, tmp_path, monkeypatch, override, message
):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(Pair, "model", no_loading)
    monkeypatch.setattr("blendin.run.load_benchmark", no_loading)
    cfg = tiny(model_dirs, tmp_path, *override.split())
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace("+", r"\+")):
        execute(cfg)
    assert not (tmp_path / "runs").exists()


def test_a_typo_in_a_key_is_refused_with_the_key_and_the_known_keys_named(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "blendin.run", "benchmark.nn=5", f"results_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=CONF.parent,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        "error: unknown config key benchmark.nn; known: data_dir, exclude_n, max_new_tokens, n,"
    )
    assert "+benchmark.nn" not in done.stderr  # not Hydra's advice to add the key


@pytest.mark.parametrize(
    "argv, message",
    [
        (["foo=1"], "error: unknown config key foo; known: base_view, batch_size, benchmark,"),
        (["-m", "method=blendin,nudging", "method.alhpa=0.3"], "error: unknown config key method.alhpa; known: alpha,"),
        (
            ["hydra/launcher=slurm", "hydra.launcher.partion=gpu"],
            "unknown config key hydra.launcher.partion; known: _target_,",
        ),
        (
            ["-m", "method=blendin,forced", "method.lam=0.2"],
            "error: method.lam is not a key of method=nudging, the choice Hydra composes before it expands the "
            "sweep (method=blendin,forced). Fix: ++method.lam=0.2",
        ),
    ],
)
def test_unknown_keys_are_named_for_runs_and_sweeps(capsys, argv, message):
    from blendin.cli import refuse_unknown_keys

    with pytest.raises(SystemExit) as exit:
        refuse_unknown_keys("config", argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err
    refuse_unknown_keys("config", ["-m", "method=blendin,forced", "++method.lam=0.2", "benchmark.n=3"])  # fine
    refuse_unknown_keys("generate", ["method=blendin", "method.alpha=0.5", "overlap=true"])  # fine


def test_tau_above_one_warns_once_per_run(model_dirs, tmp_path, monkeypatch):
    import warnings

    monkeypatch.setattr("blendin.methods._WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        execute(tiny(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "method.tau=2"))
    assert [str(w.message) for w in caught if "every step" in str(w.message)] == [
        "method.tau=2.0 > 1: the guidance is consulted at every step"
    ]


def test_overlap_is_a_setting_passed_to_the_decoder(model_dirs, tmp_path, monkeypatch):
    seen = []
    decoder = Pair.decoder

    def spy(self, method, **kwargs):
        seen.append(kwargs.get("overlap"))
        return decoder(self, method, **kwargs)

    monkeypatch.setattr(Pair, "decoder", spy)
    for value in ("true", "false", "auto"):
        execute(tiny(model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", f"overlap={value}", "force=true"))
    assert seen == [True, False, None]  # None: the engine's own default, on a GPU only


def test_a_second_writer_of_the_same_run_is_refused(model_dirs, tmp_path):
    cfg = tiny(model_dirs, tmp_path, "benchmark=gsm8k", "method=base")
    path = run_dir(cfg)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom blendin.store import RunStore\n"
            f"with RunStore({str(path)!r}).lock():\n    print('held', flush=True)\n"
            "    time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=r"is being written by pid \d+ on"):
            execute(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert execute(cfg)["n_samples"] == 3  # the lock died with its holder


def test_one_model_runs_are_reused_by_pairs_that_share_the_model(model_dirs, tmp_path, monkeypatch):
    first = tiny(model_dirs, tmp_path, "benchmark=xstest", "method=base")
    metrics = execute(first)
    assert metrics["reused_from"] is None
    other_pair = tiny(
        model_dirs,
        tmp_path,
        "benchmark=xstest",
        "method=base",
        "pair.name=tiny_other",
        f"pair.guidance.source={model_dirs['shared_guidance']}",
    )
    assert run_dir(other_pair).name == run_dir(first).name and run_dir(other_pair) != run_dir(first)
    monkeypatch.setattr(Pair, "model", lambda *a: pytest.fail("the reused run decoded again"))
    reused = execute(other_pair)
    assert reused["reused_from"] == str(run_dir(first)) and reused["pair"] == "tiny_other"
    assert reused["score"] == metrics["score"] and reused["tokens_generated"] == metrics["tokens_generated"]
    assert (run_dir(other_pair) / "tokens.parquet").read_bytes() == (run_dir(first) / "tokens.parquet").read_bytes()
    # a guided run depends on both models: another guidance model gets its own outputs
    guided = [
        tiny(model_dirs, tmp_path, "benchmark=xstest", "method=nudging", *extra)
        for extra in ((), ("pair.name=tiny_other", f"pair.guidance.source={model_dirs['shared_guidance']}"))
    ]
    assert run_dir(guided[0]).name != run_dir(guided[1]).name


def test_wandb_logger_offline_writes_config_metrics_and_sample_table(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny(
        model_dirs, tmp_path, "benchmark=gsm8k", "method=nudging", "logger=wandb", f"logger.dir={tmp_path / 'tracking'}"
    )
    metrics = execute(cfg)
    [run] = list((tmp_path / "tracking" / "wandb").glob("offline-run-*"))
    [log] = list(run.glob("run-*.wandb"))
    data = log.read_bytes()
    for _ in range(100):  # wandb's service process may still be writing the file when finish() returns
        if str(metrics["score"]).encode() in data:
            break
        time.sleep(0.2)
        data = log.read_bytes()
    assert b"gsm8k" in data and b"intervention_rate" in data and str(metrics["score"]).encode() in data
    [table] = list(run.glob("files/media/table/samples_*.table.json"))
    rows = json.loads(table.read_text())
    stored = [json.loads(line) for line in (run_dir(cfg) / "samples.jsonl").read_text().splitlines()]
    assert [r[0] for r in rows["data"]] == [s["id"] for s in stored]
    assert rows["columns"][:4] == ["id", "prompt_base", "prompt_guidance", "output"]


def test_chat_template_variables_reach_the_template(model_dirs):
    from blendin.models import ModelSpec, load_model
    from blendin.prompts import Prompt

    loaded = load_model(
        ModelSpec(model_dirs["cross_guidance"], prompt_format="chat", chat_template_kwargs={"enable_thinking": False}),
        device="cpu",
    )
    loaded.tokenizer.chat_template = (
        "{{ messages[-1]['content'] }}{% if enable_thinking is defined and not "
        "enable_thinking %}<think></think>{% endif %}"
    )
    assert loaded.prompt_text(Prompt("hi")) == "hi<think></think>"


def test_a_run_without_data_fails_before_anything_loads(model_dirs, tmp_path, monkeypatch):
    """No data directory and source=auto: one error naming both fixes, before a model or the hub is touched."""
    import blendin.data as D
    from blendin.pair import Pair

    monkeypatch.setenv("BLENDIN_DATA_DIR", str(tmp_path / "no-data-here"))
    monkeypatch.setattr(Pair, "model", lambda *a: pytest.fail("a model loaded before the data was checked"))
    monkeypatch.setattr(D, "hub_rows", lambda *a: pytest.fail("fell back to the hub"))
    cfg = tiny(model_dirs, tmp_path, "benchmark=xstest", "method=nudging")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"no data at .*no-data-here/xstest .*BLENDIN_DATA_DIR.*source=hub"):
        check_run_config(cfg)
    with pytest.raises(ConfigError, match="no-data-here"):
        execute(cfg)
    assert time.perf_counter() - started < 5
