"""vllm.plugins.load_general_plugins (0.33.0): every `vllm.general_plugins` entry point loaded
and called, once per process."""

from __future__ import annotations

DEFAULT_PLUGINS_GROUP = "vllm.general_plugins"
plugins_loaded = False


def load_general_plugins() -> None:
    global plugins_loaded
    if plugins_loaded:
        return
    plugins_loaded = True
    from importlib.metadata import entry_points

    for plugin in entry_points(group=DEFAULT_PLUGINS_GROUP):
        plugin.load()()
