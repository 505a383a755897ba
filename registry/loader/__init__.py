"""The loader serving code imports: a version's safetensors shards straight into CPU or GPU
memory, decrypted and verified on the way.

    from registry import loader

    state = loader.load("team/llama:production", device="cuda:0")
    state.version.digest        # which version this is (tag responses and caches with it)
    state.stats.throughput      # bytes per second, and more in LoadStats

    with loader.open("team/llama@7") as model:            # like safetensors.safe_open
        shard = model.get_slice("lm_head.weight")[0:4096]  # reads only the chunks it needs

`load`, `open`, `load_into` and `iter_tensors` read from the local home, or from a registry
server when MODEL_REGISTRY_URL is set (or `registry=` is a `RemoteRegistry`); docs/loader.md
says what each verifies. How they read is a `LoadOptions` (`options=`), or its fields as keyword
arguments, which replace those of `options=` when both are given:

    serving = loader.LoadOptions(device="cuda:0", workers=8)
    state = loader.load("team/llama:production", options=serving)

torch is imported only when tensors are made (`framework="numpy"` needs numpy only).

Modules, one job each: api (the calls), options (LoadOptions), job (one call at work),
reader (`open`'s reader), results (what the calls return), engine (parallel decryption and
hashing), sources (where sealed bytes and keys come from), cache (the ciphertext cache),
tensors (bytes to tensors, the CUDA side), memory (fresh host memory), progress (the bar and
the callback). Importing the loader imports the operations a load runs (`Registry` imports each
on first use), so a serving process pays for them at start-up, not in its first load.
"""

from registry.loader.api import (
    LoadedModel,
    LoadIntoResult,
    LoadOptions,
    LoadStats,
    ModelReader,
    TensorSlice,
    TensorStream,
    iter_tensors,
    load,
    load_into,
    open,
)
from registry.loader.cache import Cache
from registry.service import import_serving

import_serving()

__all__ = [
    "Cache",
    "LoadIntoResult",
    "LoadOptions",
    "LoadStats",
    "LoadedModel",
    "ModelReader",
    "TensorSlice",
    "TensorStream",
    "iter_tensors",
    "load",
    "load_into",
    "open",
]
