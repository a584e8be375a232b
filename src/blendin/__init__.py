"""blendin: inference-time alignment by guided decoding (NUDGING, BlendIn and baselines).

from blendin import Pair, pair_spec, Prompt
pair = Pair(pair_spec({"name": "p", "base": {"source": "embedded:gemma-3-270m"},
                       "guidance": {"source": "embedded:smollm2-135m-instruct"}}))
[out] = pair.decoder({"name": "blendin", "tau": 0.4}).generate([Prompt("What is 12 times 7?")])
print(out.text, out.intervention_rate)
"""

from .engine import Generation, TokenDecoder
from .errors import BlendinError, ConfigError, ModelLoadError, PromptError
from .methods import METHODS, REGISTRY, Decoder, Method, make_policy
from .models import LoadedModel, ModelSpec, load_model
from .pair import Pair, PairSpec, pair_spec
from .prompts import Prompt
from .vocab import VocabMap, build_vocab_map

__version__ = "0.1.0"
__all__ = [
    "Decoder",
    "TokenDecoder",
    "Method",
    "REGISTRY",
    "Generation",
    "BlendinError",
    "ConfigError",
    "ModelLoadError",
    "PromptError",
    "LoadedModel",
    "ModelSpec",
    "load_model",
    "Pair",
    "PairSpec",
    "pair_spec",
    "METHODS",
    "make_policy",
    "Prompt",
    "VocabMap",
    "build_vocab_map",
]
