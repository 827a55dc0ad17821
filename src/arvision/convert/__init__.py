"""Official checkpoints -> arvision models.

For now this holds the key mappings (``keys.py``), verified against the official fixtures in
``tests/test_official_parity.py``. The user-facing converters (reading the official files safely,
inferring the architecture, ``arvision convert``) are issue #4.
"""

from arvision.convert.keys import llamagen_gpt_state, llamagen_vq_state, var_state, var_vae_state

__all__ = ["llamagen_gpt_state", "llamagen_vq_state", "var_state", "var_vae_state"]
