"""Generation orders on the shared backbone."""

from arvision.generators.base import Generator, GeneratorConfig, GridConfig, GridGenerator
from arvision.generators.parts import CategoricalHead, ClassCondition
from arvision.generators.ctf import CTFConfig, CTFGenerator
from arvision.generators.continuous import ContinuousNextTokenConfig, ContinuousNextTokenGenerator
from arvision.generators.diffusion import DiffusionHead, DiffusionHeadConfig
from arvision.generators.flexvar import FlexVARConfig, FlexVARGenerator
from arvision.generators.mar import MarConfig, MarGenerator
from arvision.generators.markov_scale import MarkovScaleConfig, MarkovScaleGenerator
from arvision.generators.masked import MaskedConfig, MaskedGenerator
from arvision.generators.neighbor import NeighborConfig, NeighborGenerator
from arvision.generators.next_scale import NextScaleConfig, NextScaleGenerator
from arvision.generators.next_token import NextTokenConfig, NextTokenGenerator, rope_2d_table
from arvision.generators.sequence import SequenceConfig, SequenceGenerator, rope_1d_table
from arvision.generators.tokenbridge import ChannelARHead, ChannelHeadConfig, TokenBridgeGenConfig, TokenBridgeGenerator
from arvision.samplers.config import SamplingConfig

__all__ = [
    "CategoricalHead", "ClassCondition", "CTFConfig", "CTFGenerator", "ContinuousNextTokenConfig", "ContinuousNextTokenGenerator", "DiffusionHead", "DiffusionHeadConfig", "FlexVARConfig", "FlexVARGenerator", "Generator", "MarConfig", "MarGenerator", "GeneratorConfig", "GridConfig", "GridGenerator", "MarkovScaleConfig", "MarkovScaleGenerator", "MaskedConfig", "MaskedGenerator",
    "NeighborConfig", "NeighborGenerator", "NextScaleConfig", "NextScaleGenerator", "NextTokenConfig",
    "NextTokenGenerator", "SamplingConfig", "SequenceConfig", "SequenceGenerator", "rope_1d_table", "rope_2d_table", "ChannelARHead", "ChannelHeadConfig", "TokenBridgeGenConfig",
    "TokenBridgeGenerator",
]  # fmt: skip
