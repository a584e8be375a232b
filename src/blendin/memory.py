"""How many prompts fit in one batch, and what to do when a batch does not fit after all.

`batch_size=auto` estimates, on a GPU, how many rows fit in the memory left after the models loaded:
each row holds a KV cache per model for its prompt and every new token (the engine plans that
capacity up front), plus a few next-token distributions. On a CPU it is 8. Whatever the estimate,
`blendin.run` survives a misjudged batch: an out-of-memory error halves the batch and decoding
continues from the samples already stored (see `run._decode`).
"""

from __future__ import annotations

import torch

CPU_BATCH = 8
MAX_BATCH = 256
USABLE = 0.8  # of the free memory: allocator fragmentation and the forward's activations need the rest


def is_out_of_memory(error: BaseException | None) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, which a smaller batch may avoid: torch's own,
    or one that a library (cuBLAS, a compiled graph) raised with the message or wrapped."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError) or (
            isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token takes in the cache of `model` (all layers)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = torch.finfo(next(model.parameters()).dtype).bits // 8
    return 2 * config.num_hidden_layers * heads * head_dim * size


def auto_batch_size(models, longest_prompt: int, max_new_tokens: int, free_bytes: int | None = None) -> int:
    """The largest batch whose caches and distributions fit in `free_bytes` (default: what the GPU
    has free now; on a CPU, CPU_BATCH). models: the LoadedModels that decode (lead, guidance)."""
    device = models[0].device
    if free_bytes is None:
        if device.type != "cuda":
            return CPU_BATCH
        free_bytes = torch.cuda.mem_get_info(device)[0]
    per_row = 0
    for loaded in models:
        columns = longest_prompt + 2 * (max_new_tokens + 64)  # the plan of `engine._Batch`, generously
        per_row += kv_bytes_per_token(loaded.model) * columns + 4 * 4 * loaded.vocab_size  # + float32 distributions
    return max(1, min(MAX_BATCH, int(USABLE * free_bytes // per_row)))
