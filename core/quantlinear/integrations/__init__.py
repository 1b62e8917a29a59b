"""Integrations with model libraries, imported only when used.

* :mod:`.transformers`: Transformers models (causal LMs, omni thinkers ...) in one call;
* :mod:`.diffusers`: Diffusers models and pipelines with quantized components;
* :mod:`.mappings`: per-family checkpoint-key mappings (module trees named differently).

Importing this package imports neither Transformers nor Diffusers.
"""
