"""Integrations with training stacks, one module each, imported on demand (each needs its optional package):
``llr_kernels.integrations.torchtitan`` (torchtitan's optimizer container and config)."""
