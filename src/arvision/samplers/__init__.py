"""Samplers: sampling settings, pure logit processing, the order protocol and the one decoding loop."""

from arvision.nn.kv_cache import KVCache
from arvision.samplers.config import SamplingConfig
from arvision.samplers.logits import apply_guidance, filter_top_k, filter_top_p, guidance_weight, sample_logits
from arvision.samplers.loop import (
    DecodeOutput, DecodeRun, SamplingStats, StepInfo, check_settings, decode, sample_next_scale, sample_next_token,
)  # fmt: skip
from arvision.samplers.rng import RowStreams, image_seeds
from arvision.samplers.search import TTSVAR, BestOfN
from arvision.samplers.order import (
    ORDERS, DecodeState, Order, Sampler, Step, mask_schedule, register_order, reveal_step, row_schedules,
)  # fmt: skip

__all__ = [
    "ORDERS", "TTSVAR", "BestOfN", "RowStreams", "image_seeds", "DecodeOutput", "DecodeRun", "DecodeState", "KVCache", "Order", "Sampler", "SamplingConfig", "SamplingStats", "Step",
    "StepInfo", "apply_guidance", "check_settings", "decode", "filter_top_k", "filter_top_p", "guidance_weight",
    "mask_schedule", "register_order", "reveal_step", "row_schedules", "sample_logits", "sample_next_scale",
    "sample_next_token",
]  # fmt: skip
