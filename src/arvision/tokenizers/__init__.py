"""Image tokenizers: images in [-1, 1] <-> int64 token ids (or continuous tokens, KL)."""

from arvision.tokenizers.base import AutoencoderConfig, ConvTokenizer, Tokenizer, TokenizerOutput
from arvision.tokenizers.jpeg import JpegConfig, JpegTokenizer
from arvision.tokenizers.kl import KLConfig, KLTokenizer
from arvision.tokenizers.layout import TokenLayout
from arvision.tokenizers.multiscale import MultiScaleVQConfig, MultiScaleVQTokenizer
from arvision.tokenizers.onedim import OneDimConfig, OneDimTokenizer
from arvision.tokenizers.quantizers import MultiScaleQuantizer, QuantizerOutput, VectorQuantizer, phi_index_table
from arvision.tokenizers.tokenbridge import TokenBridgeConfig, TokenBridgeTokenizer
from arvision.tokenizers.vq import VQConfig, VQTokenizer

__all__ = [
    "AutoencoderConfig", "ConvTokenizer", "JpegConfig", "JpegTokenizer", "KLConfig", "KLTokenizer", "MultiScaleQuantizer", "MultiScaleVQConfig",
    "MultiScaleVQTokenizer", "OneDimConfig", "OneDimTokenizer",
    "QuantizerOutput", "TokenLayout", "Tokenizer", "TokenizerOutput", "VQConfig", "VQTokenizer",
    "VectorQuantizer", "phi_index_table", "TokenBridgeConfig", "TokenBridgeTokenizer",
]  # fmt: skip
