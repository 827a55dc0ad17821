"""Shared neural-network building blocks."""

from arvision.nn.conv import AttnBlock, ConvDecoder, ConvEncoder, Downsample, ResnetBlock, Upsample

__all__ = ["AttnBlock", "ConvDecoder", "ConvEncoder", "Downsample", "ResnetBlock", "Upsample"]
