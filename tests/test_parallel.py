"""One run over several processes (`blendin.parallel`), on the CPU with gloo: tensor parallel and data
parallel decode what one process decodes, a bad split is refused before anything loads, a rank that
dies ends the others with the rank and the cause named, and a restart completes every output once.

The reference is the same run decoded by one process (`execute` here). Data parallel at batch size 1
and one thread does the very same arithmetic, so its files are compared byte for byte; tensor
parallel sums each layer's halves across processes, so its probabilities are compared to float32
precision, counts taken in the distribution's tail (the guidance's top token's rank, the top-p size)
to one place, and everything chosen (tokens, sources, interventions, outputs, scores) exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from blendin.data import data_dir
from blendin.errors import ConfigError
from blendin.parallel import RankFailed, Ranks, check_splittable
from blendin.run import execute, run_dir
from blendin.store import RunStore

pytestmark = pytest.mark.skipif(not data_dir().exists(), reason="no benchmark data directory")
REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
ENV = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
PROBABILITIES = ("base_top_prob", "alpha", "blend_prob", "guide_top_prob", "base_prob_of_guide_top", "sample_prob")
# counted in the tail of the base's distribution, where near-equal probabilities may swap places
TAIL_COUNTS = ("guide_top_rank", "base_top_p_size", "top100_overlap")


def tiny(model_dirs, results, *overrides, kind: str = "shared") -> list[str]:
    """A run of a tiny pair: shared, a Gemma-3 base and a Llama guidance, both 4 heads and 2 key-value
    heads; cross, the same with two tokenizers."""
    return [
        "pair.name=tiny",
        f"pair.base.source={model_dirs[kind + '_base']}",
        f"pair.guidance.source={model_dirs[kind + '_guidance']}",
        "device=cpu",
        "benchmark=gsm8k",
        f"results_dir={results}",
        *overrides,
    ]


def reference(overrides: list[str]) -> dict:
    """The same run in this one process, on one thread (as torchrun gives each worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose(config_name="config", overrides=overrides)
        execute(cfg)
        return {"path": run_dir(cfg)}
    finally:
        torch.set_num_threads(threads)


def launch(args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def lines(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "gen_seconds"}
        for line in (path / "samples.jsonl").read_text().splitlines()
    ]


def timeless(path: Path) -> dict:
    skip = ("wall_time_s", "tokens_per_s", "created_at", "n_sessions", "mixed_environment", "processes", "tp")
    return {k: v for k, v in json.loads((path / "metrics.json").read_text()).items() if k not in skip}


def assert_close(many: dict, one: dict) -> None:
    """Everything equal but the floats read from the distributions (deferred mass, ...): a split sum rounds
    differently, so those agree to 1e-5."""
    assert many.keys() == one.keys()
    floats = [k for k, v in one.items() if isinstance(v, float)]
    assert {k: v for k, v in many.items() if k not in floats} == {k: v for k, v in one.items() if k not in floats}
    assert [many[k] for k in floats] == pytest.approx([one[k] for k in floats], abs=1e-5)


def assert_same_run(one: Path, many: Path, exact: bool) -> None:
    assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in one.iterdir())
    if exact:
        assert lines(many) == lines(one)
        assert timeless(many) == timeless(one)
    else:
        assert len(lines(many)) == len(lines(one))
        for a, b in zip(lines(many), lines(one), strict=True):
            assert_close(a, b)
        assert_close(timeless(many), timeless(one))
    a, b = pd.read_parquet(one / "tokens.parquet"), pd.read_parquet(many / "tokens.parquet")
    if exact:
        assert a.equals(b)
        return
    probabilities = [c for c in a.columns if a[c].dtype.kind == "f"]  # read from the distributions
    assert {*PROBABILITIES} <= {*probabilities}
    chosen = [c for c in a.columns if c not in (*probabilities, *TAIL_COUNTS, "guide_top_in_base_top_p")]
    assert a[chosen].equals(b[chosen])  # every token, source, intervention and text offset
    for column in TAIL_COUNTS:
        assert (a[column] - b[column]).abs().max() <= 1, column
    moved = (a[list(TAIL_COUNTS)] != b[list(TAIL_COUNTS)]).any(axis=1)
    assert a["guide_top_in_base_top_p"][~moved].equals(b["guide_top_in_base_top_p"][~moved])
    for column in probabilities:
        assert a[column].to_numpy() == pytest.approx(b[column].to_numpy(), abs=1e-5, nan_ok=True), column


# ---- refused before anything loads -----------------------------------------------------------------


def test_tp_is_refused_outside_torchrun_and_where_it_does_not_divide_the_processes(model_dirs, tmp_path, monkeypatch):
    from blendin.checks import check_run_config

    def cfg(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            return compose(config_name="config", overrides=tiny(model_dirs, tmp_path, *overrides))

    for name in ("RANK", "WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="this is one process. Fix: start it with torchrun"):
        check_run_config(cfg("parallel.tp=2"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="does not divide the 3 processes"):
        check_run_config(cfg("parallel.tp=2"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_run_config(cfg("parallel.tp=2"))  # 4 heads, 2 key-value heads: both models split in two
    with pytest.raises(ConfigError, match="has 4 attention heads and 2 key-value heads.*4 does not divide 2"):
        monkeypatch.setenv("WORLD_SIZE", "4")
        check_run_config(cfg("parallel.tp=4"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.real
def test_tp_on_the_embedded_pair_is_refused_naming_the_heads(model_dirs, tmp_path, monkeypatch):
    from blendin.checks import check_run_config

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")

    def cfg(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            return compose(config_name="config", overrides=["parallel.tp=2", f"results_dir={tmp_path}", *overrides])

    with pytest.raises(
        ConfigError, match="base model embedded:gemma-3-270m has 4 attention heads and 1 key-value head,"
    ):
        check_run_config(cfg())
    check_run_config(cfg(f"pair.base.source={model_dirs['shared_base']}"))  # the guidance is kept whole
    with pytest.raises(ConfigError, match="guidance model embedded:smollm2-135m-instruct has 9 attention heads"):
        check_run_config(cfg(f"pair.base.source={model_dirs['shared_base']}", "parallel.guidance=split"))


def test_the_guidance_and_its_untuned_twin_are_held_whole_unless_split_is_asked():
    from blendin.parallel import split_roles

    roles = ("base", "guidance", "guidance_untuned")
    assert split_roles(roles, 2) == ["base"]
    assert split_roles(roles, 2, "split") == list(roles)
    assert split_roles(roles, 1, "split") == []


def test_a_model_without_a_tensor_parallel_plan_is_refused():
    from transformers import GPT2Config

    with pytest.raises(ConfigError, match="has no tensor-parallel plan"):
        check_splittable(GPT2Config(n_head=4), 2, "base", "gpt2")


def test_the_guidance_on_a_device_of_its_own_keeps_the_run_name_and_is_refused_where_it_cannot_work(
    model_dirs, tmp_path, monkeypatch
):
    from blendin.checks import check_run_config
    from blendin.identity import run_dir

    def cfg(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            return compose(config_name="config", overrides=tiny(model_dirs, tmp_path, *overrides))

    placed = cfg("method=nudging", "pair.guidance.device=cpu")
    check_run_config(placed)
    assert run_dir(placed) == run_dir(cfg("method=nudging"))  # where a model runs is not what it computes
    for refused in (("method=nudging", "speculate=2"), ("method=nudging_words",), ("method=forced",)):
        with pytest.raises(ConfigError, match="only the guidance model may run on a device of its own"):
            check_run_config(cfg(*refused, "pair.guidance.device=cpu"))
    with pytest.raises(ConfigError, match="pair.base.device=cpu: only the guidance"):
        check_run_config(cfg("method=nudging", "pair.base.device=cpu"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="several processes"):
        check_run_config(placed)


# ---- how the work is shared ------------------------------------------------------------------------


def test_outputs_are_dealt_out_so_that_a_resume_with_another_count_loses_and_repeats_nothing():
    outputs = [f"item{i}" for i in range(23)]
    stored: list[str] = []
    for world, tp, finished_per_group in ((4, 1, 2), (6, 2, 3), (2, 2, 100)):  # killed, killed, completed
        pending = [o for o in outputs if o not in stored]
        shares = [Ranks(rank, world, tp).share(pending) for rank in range(0, world, tp)]
        assert sorted(o for share in shares for o in share) == sorted(pending)  # every output to exactly one group
        for rank in range(world):  # the ranks of a group get the same share
            assert Ranks(rank, world, tp).share(pending) == shares[rank // tp]
        stored += [o for share in shares for o in share[:finished_per_group]]
    assert sorted(stored) == sorted(outputs)


def test_each_group_appends_to_a_file_of_its_own_and_a_torn_line_is_cut_there(tmp_path):
    one, two = RunStore(tmp_path, writer="group0"), RunStore(tmp_path, writer="group1")
    one.append([{"id": "a", "sample": 0}], {"sample_id": ["a"], "sample": [0], "step": [0]})
    two.append([{"id": "b", "sample": 0}], {"sample_id": ["b"], "sample": [0], "step": [0]})
    with open(tmp_path / "_parts" / "samples-group0.jsonl", "a") as fh:
        fh.write('{"id": "c", "sam')  # killed mid-line
    torn = (tmp_path / "_parts" / "samples-group0.jsonl").read_bytes()
    assert [r["id"] for r in RunStore(tmp_path).samples(repair=False)] == ["a", "b"]  # another run's reader
    assert (tmp_path / "_parts" / "samples-group0.jsonl").read_bytes() == torn  # leaves the writer's line
    RunStore(tmp_path).append([{"id": "d", "sample": 0}], {"sample_id": ["d"], "sample": [0], "step": [0]})
    assert [r["id"] for r in RunStore(tmp_path).samples()] == ["d", "a", "b"]
    assert (tmp_path / "_parts" / "samples-group0.jsonl").read_text().count("\n") == 1


def test_a_rank_that_fails_stops_the_ranks_waiting_for_it_with_its_cause():
    from torch.distributed import HashStore

    store = HashStore()
    main, other = Ranks(0, 2, store=store), Ranks(1, 2, store=store)
    assert main.from_main("plan", lambda: {"pending": [1, 2]}) == {"pending": [1, 2]}
    assert other.from_main("plan", lambda: None) == {"pending": [1, 2]}
    main.fail(ValueError("judge server down"))
    cause = r"rank 1: stopping \(waiting for finish\), because rank 0 failed: ValueError: judge server down"
    with pytest.raises(RankFailed, match=cause):
        other.from_main("finish", lambda: None)


# ---- several processes, end to end -------------------------------------------------------------------


def test_tensor_parallel_decodes_what_one_process_decodes(model_dirs, tmp_path):
    settings = ("benchmark.n=3", "benchmark.max_new_tokens=16")
    done = launch([*TORCHRUN, "-m", "blendin.run", "-m", "method=nudging,blendin", "parallel.tp=2",
                   *tiny(model_dirs, tmp_path / "tp", *settings)])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("sweep finished: 2 done") == 1  # rank 0 speaks for both
    for method in ("nudging", "blendin"):
        one = reference(tiny(model_dirs, tmp_path / "one", f"method={method}", *settings))["path"]
        assert_same_run(one, tmp_path / "tp" / one.relative_to(tmp_path / "one"), exact=False)


def test_data_parallel_with_two_tokenizers_decodes_what_one_process_decodes(model_dirs, tmp_path):
    settings = ["benchmark.n=5", "benchmark.max_new_tokens=16", "batch_size=1"]
    done = launch([*TORCHRUN, "-m", "blendin.run", "-m", "method=nudging,blendin",
                   *tiny(model_dirs, tmp_path / "dp", *settings, kind="cross")])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("nudging", "blendin"):
        one = reference(tiny(model_dirs, tmp_path / "one", f"method={method}", *settings, kind="cross"))["path"]
        many = tmp_path / "dp" / one.relative_to(tmp_path / "one")
        assert_same_run(one, many, exact=True)
        assert [s["processes"] for s in json.loads((many / "identity.json").read_text())["sessions"]] == [2]


@pytest.mark.real
@pytest.mark.slow  # 40 s; the test above checks the same on the tiny two-tokenizer pair
def test_data_parallel_on_the_embedded_pair_decodes_what_one_process_decodes(tmp_path):
    settings = ["benchmark=gsm8k", "benchmark.n=4", "benchmark.max_new_tokens=12", "batch_size=1"]
    done = launch([*TORCHRUN, "-m", "blendin.run", "-m", "method=nudging,blendin", *settings,
                   f"results_dir={tmp_path / 'dp'}"])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("nudging", "blendin"):
        one = reference([f"method={method}", *settings, f"results_dir={tmp_path / 'one'}"])["path"]
        assert_same_run(one, tmp_path / "dp" / one.relative_to(tmp_path / "one"), exact=True)


def _when_outputs_are_stored(results: Path, procs: list[subprocess.Popen], count: int = 1) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if sum(p.read_text().count("\n") for p in results.glob("runs/*/*/*/_parts/samples-*.jsonl")) >= count:
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail("the run ended before it could be stopped: " + procs[0].communicate()[1][-2000:])
        time.sleep(0.01)
    pytest.fail("no output was stored")


def _rank_processes(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of torchrun's workers."""
    import psutil

    ranks = {}
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "blendin.run" in " ".join(child.cmdline()):
            ranks[int(rank)] = child.pid
    return ranks


def test_a_rank_killed_mid_run_ends_the_other_and_a_restart_completes_every_output_once(model_dirs, tmp_path):
    settings = ("method=nudging", "benchmark.n=6", "benchmark.max_new_tokens=24", "batch_size=1")
    args = [*TORCHRUN, "-m", "blendin.run", *tiny(model_dirs, tmp_path / "cut", *settings)]
    run = subprocess.Popen(
        args, cwd=REPO, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _when_outputs_are_stored(tmp_path / "cut", [run])
    os.kill(_rank_processes(run)[1], signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0 and time.monotonic() - killed < 30
    assert "error: rank 0: stopped by the launcher (SIGTERM)" in stderr
    root = stderr[stderr.index("Root Cause") :]
    assert "rank      : 1" in root and "Signal 9 (SIGKILL)" in root  # torchrun names the rank and the signal
    path = next((tmp_path / "cut").glob("runs/*/*/*"))
    assert not (path / "metrics.json").exists()

    again = launch(args)
    assert again.returncode == 0, again.stderr[-3000:]
    left = int(re.search(r"(\d+) of 6 samples to decode", again.stderr).group(1))
    assert 0 < left < 6
    ids = [r["id"] for r in lines(path)]
    assert len(ids) == len(set(ids)) == 6  # every output once
    one = reference(tiny(model_dirs, tmp_path / "one", *settings))["path"]
    assert_same_run(one, path, exact=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


INJECTED = """
import os, sys
from blendin.store import RunStore
if os.environ["SLURM_PROCID"] == "1":
    def fails(self, records, trace):
        raise OSError("disk full (injected)")
    RunStore.append = fails
from blendin.run import main
sys.argv[0] = "blendin.run"
main()
"""


@pytest.mark.parametrize("fault", ["exception", "kill"])
def test_without_torchrun_a_failed_or_silent_rank_ends_the_other_naming_it(model_dirs, tmp_path, fault):
    """Ranks started one by one (as srun starts them, with no torchrun agent to stop the rest; the first
    case with SLURM's variables only): a rank's exception is recorded for the others; a rank killed
    without a word is noticed by its heartbeat."""
    script = tmp_path / "rank.py"
    script.write_text(INJECTED)
    overrides = tiny(model_dirs, tmp_path, "method=nudging", "benchmark.n=6", "benchmark.max_new_tokens=24",
                     "batch_size=1", "parallel.timeout_s=3")  # fmt: skip
    command = [sys.executable, str(script)] if fault == "exception" else [sys.executable, "-m", "blendin.run"]
    port = str(_free_port())

    def place(rank: int) -> dict:
        if fault == "exception":  # srun's task variables: rank 0 holds the store on the job's first node
            return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "1",
                    "SLURM_JOB_NODELIST": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port}  # fmt: skip

    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE")}
    procs = [
        subprocess.Popen(
            [*command, *overrides],
            cwd=REPO,
            env={**clean, **ENV, **place(rank)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    if fault == "kill":
        _when_outputs_are_stored(tmp_path, procs)
        procs[1].send_signal(signal.SIGKILL)
    stopped = time.monotonic()
    _, stderr = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=60)
    assert procs[0].returncode != 0
    if fault == "exception":  # rank 0 stops in a wait or through its watch, either way naming rank 1 and why
        assert "rank 1 failed: OSError: disk full (injected)" in stderr
    else:
        assert time.monotonic() - stopped < 3 + 10
        assert "error: rank 0: stopping, because rank 1 failed: no sign of life for 3 s" in stderr
