"""moba inside other libraries' models: moba.integrations.transformers
registers MoBA as a Hugging Face transformers attention implementation."""
