"""Samplers: pure logit processing, an explicit KV cache, and the decoding loops."""

from arvision.samplers.autoregressive import SamplingStats, sample_next_scale, sample_next_token
from arvision.samplers.kv_cache import KVCache
from arvision.samplers.logits import apply_guidance, filter_top_k, filter_top_p, guidance_weight, sample_logits

__all__ = [
    "KVCache", "SamplingStats", "apply_guidance", "filter_top_k", "filter_top_p", "guidance_weight",
    "sample_logits", "sample_next_scale", "sample_next_token",
]  # fmt: skip
