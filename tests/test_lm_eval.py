"""The pair as an lm-evaluation-harness model (`blendin.lm_eval`, `blendin.likelihood`).

Independent references: lm-eval's own `hf` model on the same base weights (log-likelihoods, rolling
windows, greedy generations), plain transformers forward passes for the guidance's and NUDGING's
log-likelihoods, the policies' own blend (`Blend.decide`) for BlendIn's distribution, the engine's own
greedy outputs for `is_greedy`, and lm-eval's command line on tasks written here (no network).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CORPUS
from lm_eval.api.instance import Instance

from blendin.errors import ConfigError
from blendin.facts import add_guidance_facts
from blendin.likelihood import Item, method_logprob, score
from blendin.lm_eval import GuidedLM, _context_ids, _decoding
from blendin.methods import make_policy
from blendin.policies import Step
from blendin.prompts import Prompt
from blendin.sampling import Sampling

LONG = " ".join(CORPUS[:6])  # longer than the tiny Gemma's 36-token sliding window
CONTEXTS = ["Question: What is 12 plus 30? Answer:", LONG, "The quick brown fox", "Café 日本語 and"]
LL_ARGS = [
    (CONTEXTS[0], " 42."),
    (CONTEXTS[0], " The quick brown fox"),  # two continuations of one context: one prefill
    (CONTEXTS[0] + " ", "42"),  # a trailing space moves to the continuation
    ("", "The quick brown fox"),  # no context: the BOS (or EOS) stands before it
    (LONG, " Step 1: multiply"),
    (LONG, " sorry."),
    (CONTEXTS[3], " naïve résumé 🙂"),
]
GEN_ARGS = [
    (CONTEXTS[0], {"until": ["\n"], "max_gen_toks": 12}),
    (LONG, {"until": ["."], "max_gen_toks": 16}),
    (CONTEXTS[2], {"until": [], "max_gen_toks": 10, "do_sample": False, "temperature": 0.0}),
]
GUIDED = [
    {"method": "nudging"},
    {"method": "blendin"},
    {"method": "blendin", "top_k": None},
    {"method": "af"},
    {"method": "cc"},
    {"method": "af_cc"},
    {"method": "probe"},
]


def requests(kind: str, args) -> list[Instance]:
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


@pytest.fixture(scope="module")
def hf(model_dirs):
    from lm_eval.models.huggingface import HFLM

    return {k: HFLM(pretrained=model_dirs[f"{k}_base"], device="cpu", dtype="float32") for k in ("shared", "cross")}


@pytest.fixture(scope="module")
def pairs(shared_pair, cross_pair):
    return {"shared": shared_pair, "cross": cross_pair}


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_base_equals_lm_evals_hf_model(kind, hf, pairs):
    """method=base is lm-eval's hf model on the same weights: log-likelihoods (contexts batched and
    sharing a prefill, left-padded trees), rolling windows, and greedy generations."""
    ours = GuidedLM(pair=pairs[kind], method="base", batch_size=3, max_length=40)
    theirs = hf[kind]
    theirs._max_length = 40  # several rolling windows, contexts beyond the sliding window
    try:
        for (a, ga), (b, gb) in zip(
            theirs.loglikelihood(requests("loglikelihood", LL_ARGS)),
            ours.loglikelihood(requests("loglikelihood", LL_ARGS)),
        ):
            assert b == pytest.approx(a, abs=1e-4) and gb == ga
        texts = [(LONG + " " + LONG,), ("Café 日本語",)]
        for a, b in zip(
            theirs.loglikelihood_rolling(requests("loglikelihood_rolling", texts)),
            ours.loglikelihood_rolling(requests("loglikelihood_rolling", texts)),
        ):
            assert b == pytest.approx(a, abs=1e-4)
    finally:
        theirs._max_length = None
    ours = GuidedLM(pair=pairs[kind], method="base", batch_size=2)
    assert ours.generate_until(requests("generate_until", GEN_ARGS)) == theirs.generate_until(
        requests("generate_until", GEN_ARGS)
    )


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_every_method_at_tau_zero_is_the_base(kind, pairs):
    """tau = 0: the base is never unsure, so every guided method scores and writes as the base does."""
    base = GuidedLM(pair=pairs[kind], method="base", batch_size=2)
    want_ll = base.loglikelihood(requests("loglikelihood", LL_ARGS))
    want_gen = base.generate_until(requests("generate_until", GEN_ARGS))
    for params in GUIDED:
        lm = GuidedLM(pair=pairs[kind], tau=0.0, batch_size=2, **params)
        assert lm.loglikelihood(requests("loglikelihood", LL_ARGS)) == want_ll, params
        assert lm.generate_until(requests("generate_until", GEN_ARGS)) == want_gen, params


def _walk(model, prefix: list[int], cont: list[int]) -> torch.Tensor:
    """Log-probabilities [len(cont), V] before each continuation token: one plain forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix + cont])).logits[0, len(prefix) - 1 : len(prefix) + len(cont) - 1]
    return torch.log_softmax(logits.float(), -1)


def _reference(pair, context: str, continuation: str):
    """(base log-probs, guidance log-probs, continuation ids) by plain forwards: the base reads the
    context as lm-eval tokenizes it, the guidance its chat template, both the base's continuation ids."""
    base, guide = pair.model("base"), pair.model("guidance")
    ctx = base.tokenizer(context)["input_ids"]
    cont = base.tokenizer(context + continuation)["input_ids"][len(ctx) :]
    guide_ctx = guide.prompt_ids(Prompt(context))
    return _walk(base.model, ctx, cont), _walk(guide.model, guide_ctx, cont), torch.tensor(cont)


ARGS = [a for a in LL_ARGS if a[0] and not a[0].endswith(" ")]


def test_nudging_scores_the_guidance_where_the_base_is_unsure(shared_pair):
    """Shared tokenizer: NUDGING's log-likelihood takes the guidance's log-probability where the base's
    top probability is below tau and the base's elsewhere (plain forwards as the reference)."""
    lm = GuidedLM(pair=shared_pair, method="nudging", tau=0.4, batch_size=2)
    got = lm.loglikelihood(requests("loglikelihood", ARGS))
    unsure_somewhere = False
    for (context, continuation), (value, _) in zip(ARGS, got):
        lpb, lpg, ref = _reference(shared_pair, context, continuation)
        unsure = lpb.exp().max(-1).values < 0.4
        unsure_somewhere |= bool(unsure.any())
        want = torch.where(unsure, lpg.gather(-1, ref[:, None])[:, 0], lpb.gather(-1, ref[:, None])[:, 0]).sum()
        assert value == pytest.approx(float(want), abs=1e-4)
    assert unsure_somewhere


def test_a_full_blend_with_alpha_one_is_the_guidance(shared_pair):
    """Shared tokenizer, tau 1.0 and alpha 1 (every unsure step blends, all weight on the guidance):
    over the full vocabulary BlendIn's log-likelihood is the guidance's; over the top-k union it is
    the guidance's renormalised over its own top-k, and -inf (floor=-inf) outside it."""
    full = GuidedLM(pair=shared_pair, method="blendin", tau=1.0, alpha=1.0, top_k=None)
    top = GuidedLM(pair=shared_pair, method="blendin", tau=1.0, alpha=1.0, top_k=20, floor=float("-inf"))
    got_full = full.loglikelihood(requests("loglikelihood", ARGS))
    got_top = top.loglikelihood(requests("loglikelihood", ARGS))
    for (context, continuation), (value_full, _), (value_top, _) in zip(ARGS, got_full, got_top):
        lpb, lpg, ref = _reference(shared_pair, context, continuation)
        unsure = lpb.exp().max(-1).values < 1.0
        base_ref, guide_ref = lpb.gather(-1, ref[:, None])[:, 0], lpg.gather(-1, ref[:, None])[:, 0]
        assert value_full == pytest.approx(float(torch.where(unsure, guide_ref, base_ref).sum()), abs=1e-4)
        top_p, top_ids = lpg.exp().topk(20, -1)
        inside = (top_ids == ref[:, None]).any(-1)
        renormalised = torch.where(inside, guide_ref - top_p.sum(-1).log(), float("-inf"))
        want = float(torch.where(unsure, renormalised, base_ref).sum())
        assert value_top == pytest.approx(want, abs=1e-4) if math.isfinite(want) else value_top == want


@pytest.mark.parametrize("kind", ["shared", "cross"])
@pytest.mark.parametrize("params", [{"top_k": 100}, {"top_k": None}, {"top_k": 5, "alpha": 0.5}])
def test_blend_distribution_is_the_one_the_decoder_takes_its_argmax_from(kind, params, pairs):
    """At every unsure position, scoring every base token with `method_logprob` gives the blend whose
    argmax `Blend.decide` takes: the same argmax and, at it, the decoder's renormalised probability."""
    pair = pairs[kind]
    policy = make_policy({"name": "blendin", "tau": 0.9, **params})
    base, guide = pair.model("base"), pair.model("guidance")  # any two distributions will do: each model on LONG
    base_ids, guide_ids = base.tokenizer(LONG)["input_ids"], guide.tokenizer(LONG)["input_ids"]
    lpb, lpg = _walk(base.model, base_ids[:1], base_ids[1:]), _walk(guide.model, guide_ids[:1], guide_ids[1:])
    n = min(len(lpb), len(lpg))
    lpb, lpg = lpb[:n], lpg[:n]
    vocab = pair.vocab
    pb = lpb.exp()
    top_prob, top_id = pb.max(-1)
    zeros = torch.zeros_like(top_id)
    step = Step(pb, top_prob, top_id, top_prob < policy.tau, zeros, zeros, vocab=vocab)
    add_guidance_facts(step, lpg.exp())
    choice = policy.decide(step)
    checked = 0
    for i in range(lpb.shape[0]):
        if not step.consulted[i] or choice.token[i] >= vocab.base_size or checked == 12:
            continue
        every = torch.arange(vocab.base_size)
        logp, _ = method_logprob(policy, lpb[i].expand(len(every), -1), every, lpg[i].expand(len(every), -1), vocab)
        assert int(logp.argmax()) == int(choice.token[i])
        assert float(logp.max().exp()) == pytest.approx(float(choice.blend_prob[i]), rel=1e-4)
        assert float(logp.exp().sum()) <= 1 + 1e-4
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_greedy_outputs_score_as_greedy(kind, pairs):
    """What a method writes is, token by token, its own argmax under its scored distribution: scoring
    the engine's greedy tokens gives is_greedy (outputs with a spelled guidance token excepted: that
    step spans several base tokens)."""
    methods = [{"method": "base"}, {"method": "guidance"}, *GUIDED, {"method": "blendin", "alpha": 0.5, "tau": 0.8}]
    checked = 0
    for params in methods:
        lm = GuidedLM(pair=pairs[kind], batch_size=2, **params)
        outs = lm.reading.decoder(lm.method).generate([Prompt(c) for c in CONTEXTS], max_new_tokens=12)
        guide = [None if lm.guidance is None else tuple(_context_ids(lm.guidance, c)) for c in CONTEXTS]
        items = [
            Item(tuple(lm.lead.prompt_ids(Prompt(c))), tuple(o.token_ids), g) for c, o, g in zip(CONTEXTS, outs, guide)
        ]
        for out, (_, greedy) in zip(outs, score(items, lm.policy, lm.lead, lm.guidance, lm.vocab, batch_size=3)):
            if len(out.token_ids) == out.n_tokens:
                assert greedy, params
                checked += 1
    assert checked >= len(methods) * len(CONTEXTS) - 4


def test_bad_settings_are_refused_before_any_model_loads(monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("blendin.pair.load_model", no_loading)
    cases = [
        ({"method": "blendin", "tau": -1}, "method.tau=-1.0 is out of range"),
        ({"method": "blendin", "alpha": 1.5}, "method.alpha=1.5 is out of range"),
        ({"method": "nudging", "alpha": 0.5}, "method nudging does not take method.alpha"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "forced"}, "walks given answers"),
        ({"method": "aligned"}, "needs pair.aligned"),
        ({"pair": "nope"}, "not a pair config"),
        ({"colour": "red"}, "model_args colour unknown"),
        ({"batch_size": 0}, "batch_size=0 must be a positive integer or auto"),
        ({"floor": 3}, "floor=3 must be a log-probability"),
        ({"dtype": "float8"}, "dtype='float8' is not one of"),
    ]
    for args, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            GuidedLM(**{"pair": "smollm2_gemma3", "device": "cpu", **args})


def test_generation_settings():
    greedy = Sampling()
    assert _decoding({"until": "\n\n", "max_gen_toks": 5}, 256) == {
        "until": ["\n\n"],
        "max_gen_toks": 5,
        "sampling": greedy,
    }
    dropped = _decoding({"until": ["Q:"], "do_sample": False, "temperature": 0.7, "top_p": 0.9}, 256)
    assert dropped["max_gen_toks"] == 256 and dropped["sampling"] == greedy  # as transformers: greedy
    assert _decoding({"max_new_tokens": 7}, 256)["max_gen_toks"] == 7
    drawn = _decoding({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3}, 256)
    assert drawn["sampling"] == Sampling(temperature=0.7, top_p=0.9, top_k=40, seed=3)
    assert _decoding({"temperature": 0.5}, 256, seed=9)["sampling"] == Sampling(temperature=0.5, seed=9)
    assert _decoding({"do_sample": True}, 256)["sampling"] == Sampling(temperature=1.0)
    with pytest.raises(ConfigError, match=r"decoding.top_p=1.5 must be in"):
        _decoding({"do_sample": True, "top_p": 1.5}, 256)
    with pytest.raises(ConfigError, match=r"\['num_beams'\] are not supported"):
        _decoding({"num_beams": 4}, 256)


def test_sampled_generations_do_not_depend_on_batch_or_order_and_repeats_differ(cross_pair):
    """lm-eval repeats a request for several samples per document: each copy draws its own stream,
    keyed by (task, document, request, repeat), whatever the batch size or the order of the requests."""
    kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": True, "temperature": 1.0}
    docs = ["Question: What is 2 plus 2?\nAnswer:", "Question: Name a colour.\nAnswer:"]

    def ask(batch_size, order, seed=None):
        reqs = [Instance("generate_until", {}, (docs[d], kwargs), 0, ("tiny", d, 3)) for d in order for _ in range(3)]
        lm = GuidedLM(pair=cross_pair, method="nudging", tau=0.6, batch_size=batch_size, seed=seed)
        texts = lm.generate_until(reqs)
        return sorted(zip([r.doc_id for r in reqs], texts))

    one = ask(1, [0, 1])
    assert one == ask(4, [1, 0])
    assert len({t for d, t in one if d == 0}) > 1  # the repeats of a document are different samples
    assert ask(4, [0, 1], seed=1) != one


def test_apply_chat_template_uses_the_base_template(shared_pair, cross_pair):
    """lm-eval's --apply_chat_template renders the context with the base's chat template (the guidance
    reads its own around whatever context it gets); a base without one is refused with the fix named."""
    chat = [{"role": "user", "content": "What is 12 plus 30?"}]
    text = GuidedLM(pair=shared_pair, method="base").apply_chat_template(chat)
    assert text == "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ConfigError, match="has no chat template. Fix: leave the flag out"):
        GuidedLM(pair=cross_pair, method="base").apply_chat_template(chat)


def test_scoring_refuses_a_method_without_a_next_token_distribution(shared_pair):
    lm = GuidedLM(pair=shared_pair, method="cap")
    with pytest.raises(ConfigError, match="method cap has no next-token distribution"):
        lm.loglikelihood(requests("loglikelihood", LL_ARGS[:1]))


MC = [
    {"question": "What is 12 plus 30?", "choices": ["42", "12", "30", "7"], "answer": 0},
    {"question": "What does the fox jump over?", "choices": ["the lazy dog", "the sea"], "answer": 0},
    {"question": "Who sold clips in April?", "choices": ["Natalia", "the model", "a dog"], "answer": 0},
    {"question": "What should you never share?", "choices": ["passwords", "a poem", "kindness"], "answer": 0},
]
GEN = [
    {"question": "What is 12 plus 30?", "answer": "42"},
    {"question": "Write a short poem about the sea.", "answer": "The sea is wide"},
    {"question": "Step 1: multiply 6 by 7.", "answer": "42"},
]


def _tasks(folder: Path) -> Path:
    """Two local lm-eval tasks (a multiple-choice and a generative one) over JSON Lines files."""
    for name, rows in (("mc", MC), ("gen", GEN)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = "dataset_path: json\ntest_split: test\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\", \"Question:\"]\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return folder


def test_simple_evaluate_takes_the_model_and_base_matches_hf(tmp_path, shared_pair, hf):
    """lm_eval.simple_evaluate(model=GuidedLM(...)): with method=base every multiple-choice answer's
    log-likelihood is the hf model's, so are the accuracies."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(_tasks(tmp_path)))
    runs = {}
    for name, model in (("ours", GuidedLM(pair=shared_pair, method="base", batch_size=4)), ("hf", hf["shared"])):
        runs[name] = lm_eval.simple_evaluate(model=model, tasks=["tiny_mc"], task_manager=manager, log_samples=True)
    for key in ("acc,none", "acc_norm,none"):
        assert runs["ours"]["results"]["tiny_mc"][key] == runs["hf"]["results"]["tiny_mc"][key]
    ours, theirs = (sorted(r["samples"]["tiny_mc"], key=lambda s: s["doc_id"]) for r in (runs["ours"], runs["hf"]))
    for a, b in zip(ours, theirs):
        for x, y in zip(a["resps"], b["resps"]):
            assert float(x[0][0]) == pytest.approx(float(y[0][0]), abs=1e-4)


def test_command_line_runs_both_task_kinds(tmp_path, model_dirs):
    """`python -m blendin.lm_eval` is lm-eval's command line with the model registered: a generative
    and a multiple-choice task end to end, results in lm-eval's JSON; a bad setting is one error line."""
    tasks = _tasks(tmp_path)
    args = f"base={model_dirs['cross_base']},guidance={model_dirs['cross_guidance']},method=blendin,tau=0.5,device=cpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "blendin.lm_eval", "--model", "blendin", "--tasks", "tiny_gen,tiny_mc"]
    command += ["--include_path", str(tasks), "--output_path", str(tmp_path / "out"), "--batch_size", "4"]
    done = subprocess.run(command + ["--model_args", args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result.read_text())
    assert 0 <= results["results"]["tiny_mc"]["acc,none"] <= 1
    assert 0 <= results["results"]["tiny_gen"]["exact_match,none"] <= 1
    assert results["config"]["model"] == "blendin" and results["config"]["model_args"]["method"] == "blendin"
    assert "tiny_mc" in done.stdout and "tiny_gen" in done.stdout  # lm-eval's printed table


def test_command_line_error_is_one_line(tmp_path, monkeypatch, capsys, model_dirs):
    from blendin.lm_eval import main

    args = f"base={model_dirs['shared_base']},guidance={model_dirs['shared_guidance']},method=blendin,tau=-1"
    command = [
        "--model",
        "blendin",
        "--tasks",
        "tiny_mc",
        "--include_path",
        str(_tasks(tmp_path)),
        "--model_args",
        args,
    ]
    monkeypatch.setattr(sys, "argv", ["blendin.lm_eval", *command])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    assert "error: method.tau=-1.0 is out of range: it must be >= 0.0" in capsys.readouterr().err


def _main(monkeypatch, capsys, argv) -> tuple[int, str]:
    from blendin.lm_eval import main

    monkeypatch.setattr(sys, "argv", ["blendin.lm_eval", *argv])
    with pytest.raises(SystemExit) as exit:
        main()
    return exit.value.code, capsys.readouterr().err


def test_a_method_without_a_distribution_is_refused_before_models_or_data_load(tmp_path, monkeypatch, capsys):
    """cap has no next-token distribution: asked for a log-likelihood task, it is refused from the tasks'
    configs, before a model loads or a task's data is read."""
    import datasets

    def no(*args, **kwargs):
        raise AssertionError("loaded before the refusal")

    monkeypatch.setattr("blendin.pair.load_model", no)
    monkeypatch.setattr(datasets, "load_dataset", no)
    argv = ["--model", "blendin", "--tasks", "tiny_gen,tiny_mc", "--include_path", str(_tasks(tmp_path))]
    code, err = _main(monkeypatch, capsys, [*argv, "--model_args", "method=cap,device=cpu"])
    assert code == 2
    assert "error: method cap has no next-token distribution" in err and "tasks tiny_mc are scored" in err


def test_task_data_out_of_reach_is_one_error_line(tmp_path, monkeypatch, capsys, model_dirs):
    """Offline (or without network) a task whose data is not on the machine: an error that says how to get
    the data, not the datasets library's ConnectionError traceback."""
    import datasets

    def offline(*args, **kwargs):  # what datasets raises with HF_DATASETS_OFFLINE=1 and nothing cached
        raise ConnectionError("Couldn't reach 'tiny/data' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    args = f"base={model_dirs['shared_base']},guidance={model_dirs['shared_guidance']},method=nudging,device=cpu"
    argv = ["--model", "blendin", "--tasks", "tiny_gen", "--include_path", str(_tasks(tmp_path))]
    code, err = _main(monkeypatch, capsys, [*argv, "--model_args", args])
    assert code == 2
    assert "error: a task's data could not be fetched (Couldn't reach 'tiny/data'" in err
    assert "HF_DATASETS_OFFLINE=1" in err and "Traceback" not in err


def test_help_names_the_blendin_model_and_lm_evals_options(monkeypatch, capsys):
    from blendin.lm_eval import main

    monkeypatch.setattr(sys, "argv", ["blendin.lm_eval", "--help"])
    with pytest.raises(SystemExit) as exit:
        main()
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert out.startswith("usage: python -m blendin.lm_eval --model blendin")
    assert "--model_args of the model blendin" in out and "--tasks" in out and "--batch_size" in out


def test_a_method_that_only_decodes_greedily_refuses_to_sample(cross_pair):
    lm = GuidedLM(pair=cross_pair, method="nudging_words", tau=0.4)
    req = Instance("generate_until", {}, ("Question: 2 + 2?", {"do_sample": True, "max_gen_toks": 4}), 0, ("t", 0, 1))
    with pytest.raises(ConfigError, match="method nudging_words decodes greedily only"):
        lm.generate_until([req])
    with pytest.raises(ConfigError, match=r"decoding.top_p=0.0 must be in \(0, 1\]"):
        _decoding({"do_sample": True, "top_p": 0}, 256)
