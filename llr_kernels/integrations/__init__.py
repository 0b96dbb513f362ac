"""Recipes for training frameworks, one module each, imported on demand so that none of their packages is needed
to import llr_kernels: ``llr_kernels.integrations.hf`` (Hugging Face ``Trainer``)."""
