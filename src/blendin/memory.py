"""How many prompts fit in one batch, and what to do when a batch does not fit after all.

`batch_size=auto` estimates, on a GPU, how many rows fit in the memory left after the models loaded:
each row holds a KV cache per model for its prompt and every new token (the engine plans that
capacity up front), a few next-token distributions, and its prompt's activations while the prompts
admitted together are prefilled. "Left" counts the allocator's cached blocks as free. On a CPU it is
8. Whatever the estimate, `blendin.run` survives a misjudged batch: an out-of-memory error halves the batch and decoding
continues from the samples already stored (see `run._decode`).
"""

from __future__ import annotations

import gc
import sys

import torch

CPU_BATCH = 8
MAX_BATCH = 256
USABLE = 0.8  # of the free memory: allocator fragmentation and the forward's activations need the rest


# how libraries word an allocation failure: torch's OutOfMemoryError text, CUDA's own, cuBLAS's and the runtime's
_OOM_WORDS = ("out of memory", "cublas_status_alloc_failed", "cudaerrormemoryallocation")


def is_out_of_memory(error: BaseException | None) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, which a smaller batch may avoid: torch's own,
    or one that a library (cuBLAS, a compiled graph, CUDA graph capture) raised with the message or wrapped."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError) or (
            isinstance(error, RuntimeError) and any(w in str(error).lower() for w in _OOM_WORDS)
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


def release_after_out_of_memory() -> None:
    """Give back what a failed batch held before trying a smaller one: objects of the failed step, the
    CUDA graphs recorded so far (a capture that failed half-way leaves their manager unusable, and their
    memory pool is not returned by `empty_cache`; graphs are recorded again for the new batch), and the
    allocator's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        if "torch._inductor.cudagraph_trees" in sys.modules:
            sys.modules["torch._inductor.cudagraph_trees"].reset_cudagraph_trees()
        torch.cuda.empty_cache()


def kv_bytes_per_token(model, shards: int = 1) -> int:
    """Bytes of keys and values one token takes in the cache of `model` (all layers) in one process;
    shards: the processes a tensor-parallel model is split over (each holds its share of the heads)."""
    config = model.config.get_text_config()
    heads = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) // shards
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * _dtype_bytes(model)


def prefill_bytes_per_token(model, shards: int = 1) -> int:
    """Activations one prompt token needs at the peak of its prefill (one layer at a time: the hidden
    states and their projections, and the MLP's gate, up and product, of which a split model holds
    1/shards)."""
    config = model.config.get_text_config()
    return _dtype_bytes(model) * (6 * config.hidden_size + 3 * config.intermediate_size // shards)


def _dtype_bytes(model) -> int:
    return torch.finfo(next(model.parameters()).dtype).bits // 8


def available_bytes(device: torch.device) -> int:
    """Memory a new batch can use on `device`: what the driver reports free plus what the allocator holds
    cached but unused (blocks freed by an earlier run of the process, which it hands out again), within
    the process's share of the GPU if one was set (`torch.cuda.set_per_process_memory_fraction`)."""
    gc.collect()  # tensors of an earlier batch that only the collector frees
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    cached = reserved - torch.cuda.memory_allocated(device)
    allowed = int(torch.cuda.get_per_process_memory_fraction(device) * total) - reserved
    return max(0, min(free, allowed)) + cached


def auto_batch_size(models, longest_prompt: int, max_new_tokens: int, free_bytes: int | None = None) -> int:
    """The largest batch whose caches, distributions and prompt prefill fit in `free_bytes` (default: what
    the GPU can give now, `available_bytes`; on a CPU, CPU_BATCH). models: the LoadedModels that decode
    (lead, guidance). Prompts are admitted (prefilled) together, so each row also needs its prompt's
    activations and the attention masks over it. A model split over tensor-parallel processes
    (`LoadedModel.tp`) counts the heads this process holds."""
    device = models[0].device
    if free_bytes is None:
        if device.type != "cuda":
            return CPU_BATCH
        free_bytes = available_bytes(device)
    per_row = 0
    for loaded in models:
        columns = longest_prompt + 2 * (max_new_tokens + 64)  # the plan of `engine._Batch`, generously
        shards = getattr(loaded, "tp", 1)  # the heads and MLP share this process holds; logits are gathered whole
        per_row += kv_bytes_per_token(loaded.model, shards) * columns + 4 * 4 * loaded.vocab_size  # + distributions
        per_row += prefill_bytes_per_token(loaded.model, shards) * longest_prompt + 2 * longest_prompt * columns
    return max(1, min(MAX_BATCH, int(USABLE * free_bytes // per_row)))
