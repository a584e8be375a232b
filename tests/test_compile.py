"""compile=compile (decode steps through torch.compile) gives the eager engine's outputs token for
token in float32: one prompt, a batch, and prompts joining a batch whose other rows are still running.
The same code is what compile=cudagraphs captures on a GPU (tests/test_gpu.py)."""

from __future__ import annotations

import pytest
from conftest import PROMPTS

from blendin.errors import ConfigError
from blendin.prompts import Prompt

METHODS = [{"name": "base"}, {"name": "nudging", "tau": 0.4}, {"name": "blendin", "tau": 0.4}]


def compare(pair, prompts, max_new_tokens, stop=()):
    for method in METHODS:
        for batch_size in (1, 2):
            eager = pair.decoder(method).generate(
                prompts, max_new_tokens=max_new_tokens, stop_strings=stop, batch_size=batch_size
            )
            compiled = pair.decoder(method, compile="compile").generate(
                prompts, max_new_tokens=max_new_tokens, stop_strings=stop, batch_size=batch_size
            )
            assert [o.token_ids for o in compiled] == [o.token_ids for o in eager], (method, batch_size)
            assert [o.trace["applied"] for o in compiled] == [o.trace["applied"] for o in eager]
    return eager


@pytest.mark.parametrize("kind", ["shared", "cross"])
def test_compiled_decode_steps_equal_eager(kind, shared_pair, cross_pair):
    pair = shared_pair if kind == "shared" else cross_pair
    prompts = [Prompt(p) for p in PROMPTS]
    # a stop string ends rows at different steps: the waiting prompts join rows that are still running
    eager = compare(pair, prompts, max_new_tokens=20, stop=["e"])
    assert len({o.n_tokens for o in eager}) > 1, "rows should finish at different steps"


def test_cudagraphs_need_a_gpu(shared_pair):
    with pytest.raises(ConfigError, match="cudagraphs needs a CUDA device"):
        shared_pair.decoder({"name": "base"}, compile="cudagraphs")
    with pytest.raises(ConfigError, match="compile="):
        shared_pair.decoder({"name": "base"}, compile="fast")
