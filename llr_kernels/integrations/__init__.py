"""Integrations with training stacks, one module each, imported on demand so that none of their packages is needed
to import llr_kernels: ``llr_kernels.integrations.hf`` (Hugging Face ``Trainer``), ``llr_kernels.integrations.torchtitan``
(torchtitan's optimizer container and config)."""
