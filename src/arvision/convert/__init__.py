"""Official checkpoints -> arvision models.

* :func:`from_var` (VAR VQVAE + transformer), :func:`from_llamagen` (LlamaGen VQ + c2i GPT) and
  :func:`from_mar` (MAR KL VAE + MAR)
  read the official files, infer the architecture from the tensors and return a
  :class:`~arvision.Pipeline` that reproduces the official outputs; ``pipe.save_pretrained(dir)``
  writes an arvision model directory (``arvision convert var|llamagen`` does both).
* :func:`read_checkpoint` reads a ``.pth``/``.pt``/``.safetensors`` file safely
  (``weights_only``; ``{"model"}``/``{"module"}``/``{"state_dict"}``/``{"ema"}`` containers,
  ``_orig_mod.``/``module.`` prefixes).
* ``keys.py``: the key mappings, verified against the official fixtures in
  ``tests/test_official_parity.py``.

User documentation: docs/convert.md.
"""

from arvision.checkpoints import read_checkpoint
from arvision.convert.keys import llamagen_gpt_state, llamagen_vq_state, var_state, var_vae_state
from arvision.convert.llamagen import build_llamagen, from_llamagen, infer_llamagen
from arvision.convert.mar import build_mar, from_mar, infer_mar
from arvision.convert.var import build_var, from_var, infer_var

__all__ = [
    "build_llamagen",
    "build_mar",
    "from_mar",
    "infer_mar",
    "build_var",
    "from_llamagen",
    "from_var",
    "infer_llamagen",
    "infer_var",
    "llamagen_gpt_state",
    "llamagen_vq_state",
    "read_checkpoint",
    "var_state",
    "var_vae_state",
]
