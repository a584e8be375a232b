"""How one prompt is shown to each model.

The base model sees plain text, `"{system}\\n{user}\\n"` (the reference protocol's format; the
benchmarks put their "Question: " prefix into `user`). The guidance model sees its tokenizer's chat
template with a system and a user turn, and the assistant turn opened. Both then continue the same
shared answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PromptError


@dataclass(frozen=True)
class Prompt:
    user: str
    system: str | None = None

    def __post_init__(self):
        if not isinstance(self.user, str) or not self.user.strip():
            raise PromptError("the prompt is empty: give some text, e.g. prompt=\"What is 2+2?\"")


def plain_text(prompt: Prompt) -> str:
    return f"{prompt.system}\n{prompt.user}\n" if prompt.system else f"{prompt.user}\n"


def render_ids(
    prompt: Prompt, tokenizer, prompt_format: str, model_name: str = "model", template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of `prompt` for a model whose prompt format is "plain" or "chat"."""
    text = render_text(prompt, tokenizer, prompt_format, model_name, template_kwargs)
    # plain text gets the tokenizer's own BOS; a chat template writes its special tokens itself
    return list(tokenizer(text, add_special_tokens=prompt_format == "plain")["input_ids"])


def render_text(
    prompt: Prompt, tokenizer, prompt_format: str, model_name: str = "model", template_kwargs: dict | None = None
) -> str:
    """The text a model is shown for `prompt` (before its tokenizer adds any BOS).

    template_kwargs go to the chat template, e.g. {"enable_thinking": False} for Qwen3.
    """
    if prompt_format == "plain":
        return plain_text(prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"'{model_name}' is prompted with its chat template, but its tokenizer has none. "
            "Fix: use an instruct model that ships a chat template, or set its prompt_format to plain "
            "(e.g. pair.guidance.prompt_format=plain) to show it the same plain text as the base model"
        )
    return _apply_chat_template(tokenizer, prompt, dict(template_kwargs or {}))


def _apply_chat_template(tokenizer, prompt: Prompt, kwargs: dict) -> str:
    user = {"role": "user", "content": prompt.user}
    if prompt.system is None:
        return tokenizer.apply_chat_template([user], tokenize=False, add_generation_prompt=True, **kwargs)
    messages = [{"role": "system", "content": prompt.system}, user]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    except Exception as err:  # templates such as Gemma-2's reject a system turn: fold it into the user turn
        if "system" not in str(err).lower():
            raise
        merged = {"role": "user", "content": f"{prompt.system}\n\n{prompt.user}"}
        return tokenizer.apply_chat_template([merged], tokenize=False, add_generation_prompt=True, **kwargs)


def prefix_id(tokenizer) -> int:
    """What stands before a text with no context: the BOS, else the EOS (lm-eval's prefix_token_id)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_as_is(tokenizer, text: str) -> list[int]:
    """`text` to be continued as it is (no newline added, unlike `plain_text`), tokenized as lm-eval's
    hf model and an OpenAI-style completions server read it: with the tokenizer's own special tokens
    (its BOS), unless the text already starts with the BOS."""
    special = not text.startswith(tokenizer.decode(prefix_id(tokenizer)))
    return tokenizer.encode(text, add_special_tokens=special)
