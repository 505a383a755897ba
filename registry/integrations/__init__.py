"""The registry inside the serving engines people run: Hugging Face transformers, vLLM (a model
loader plugin) and KServe (a storage initializer). Each is built on the loader and the facade
alone, and imports its engine only when used (docs/serving.md)."""
