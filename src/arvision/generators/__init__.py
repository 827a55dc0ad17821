"""Generation orders on the shared backbone."""

from arvision.generators.base import Generator, GeneratorConfig, SamplingConfig
from arvision.generators.next_scale import NextScaleConfig, NextScaleGenerator
from arvision.generators.next_token import NextTokenConfig, NextTokenGenerator, rope_2d_table

__all__ = [
    "Generator", "GeneratorConfig", "NextScaleConfig", "NextScaleGenerator", "NextTokenConfig",
    "NextTokenGenerator", "SamplingConfig", "rope_2d_table",
]  # fmt: skip
