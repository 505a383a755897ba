"""A stand-in for the parts of vLLM (0.33.0) that registry.integrations.vllm uses, put on
sys.path by tests/test_integration_vllm.py (the real package needs a CUDA torch). Each name has
the real one's signature; scripts/check_vllm_plugin.sh runs the plugin against the real one."""

__version__ = "0.33.0+fake"
