"""arvision: autoregressive visual generation.

Tokenizers, generation orders and samplers that compose; official checkpoints that load; one
command each for training, sampling and evaluation.
"""

__version__ = "0.1.0"

from arvision.hub import list_models, load  # noqa: E402
from arvision.pipeline import GenerationOutput, Pipeline  # noqa: E402

__all__ = ["GenerationOutput", "Pipeline", "__version__", "list_models", "load"]
