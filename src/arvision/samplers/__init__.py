"""Samplers: pure logit processing, an explicit KV cache, and the decoding loops of every order."""

from arvision.samplers.autoregressive import SamplingStats, sample_next_scale, sample_next_token
from arvision.samplers.kv_cache import KVCache
from arvision.samplers.logits import apply_guidance, filter_top_k, filter_top_p, guidance_weight, sample_logits
from arvision.samplers.masked import mask_schedule, reveal_step, sample_markov_scale, sample_masked, sample_neighbor
from arvision.samplers.orders import check_settings, sample_tokens

__all__ = [
    "KVCache", "SamplingStats", "apply_guidance", "check_settings", "filter_top_k", "filter_top_p", "guidance_weight", "mask_schedule",
    "reveal_step", "sample_logits", "sample_markov_scale", "sample_masked", "sample_neighbor", "sample_next_scale",
    "sample_next_token", "sample_tokens",
]  # fmt: skip
