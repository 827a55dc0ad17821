"""Shared neural-network building blocks."""

from arvision.nn.conv import AttnBlock, ConvDecoder, ConvEncoder, Downsample, ResnetBlock, Upsample
from arvision.nn.linear import Linear, set_packed_linear

__all__ = ["AttnBlock", "ConvDecoder", "ConvEncoder", "Downsample", "Linear", "ResnetBlock", "Upsample", "set_packed_linear"]
