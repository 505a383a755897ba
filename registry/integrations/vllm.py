"""vLLM's `model-registry` load format: a model-loader plugin that streams a prepared folder's
pinned version from the registry into `model.load_weights`, each file's tensors as that file
verifies, with no weight ever written to disk in plaintext.

    pip install 'model-registry[vllm]'
    model-registry prepare team/llama:production /srv/llama      # resolves the alias, once
    MODEL_REGISTRY_HOME=...  vllm serve /srv/llama --load-format model-registry
    # or, through a registry server and its key broker, with the ciphertext cache:
    MODEL_REGISTRY_URL=https://... MODEL_REGISTRY_TOKEN=mrt_...  vllm serve /srv/llama ...

vLLM finds the plugin through the `vllm.general_plugins` entry point (`register`, run in every
vLLM process: the front end, the engine core and each worker). The prepared folder is vLLM's
model path (`model_config.model`): vLLM reads config.json and the tokenizer from it, and the
loader reads its pin (`registry.json`, registry.prepared) and loads exactly the pinned digest
(`name@blake3:<full digest>`). The alias was resolved once, by `prepare`, so every worker and
tensor-parallel rank loads the same version whatever the alias says by then; a version the
registry no longer has under that digest is an error, never a fallback to another version.

Before any weight is read, the folder's files (config, tokenizer, ...) are hashed against the
pinned version's manifest, so vLLM builds the model from that version's config and nothing
else. Then `registry.loader.iter_tensors` streams the weights (full verification: every chunk
authenticated, every file's BLAKE3 checked, and a file's tensors handed over only once the whole
file matched), and the names the model did not load are checked as vLLM's default loader does.

Which registry: MODEL_REGISTRY_URL (+ MODEL_REGISTRY_TOKEN) when set, else the local home
(MODEL_REGISTRY_HOME), exactly as `registry.loader` chooses; set them in the environment vLLM
runs in (its workers inherit it). Through a server, the ciphertext cache is on by default
(MODEL_REGISTRY_CACHE_DIR, MODEL_REGISTRY_CACHE_SIZE; docs/loader.md).

Options: vLLM's `--model-loader-extra-config` (LoadConfig.model_loader_extra_config), a JSON
object with any of
    workers    int, decryption threads per worker process (default: one per core it may use)
    cache      bool, the ciphertext cache (default: on for a server or an all-S3 home)
    cache_dir  str, a cache folder of its own (MODEL_REGISTRY_CACHE_SIZE still bounds it)
    device     "cpu" (default: tensors in host memory, copied by the model's weight loaders)
               or "cuda" (each file decrypted into the worker's current GPU through pinned
               staging buffers; the tensors handed over are on that GPU)
e.g. `--model-loader-extra-config '{"workers": 8, "device": "cuda"}'`. Any other key is refused.

vllm (and torch) are imported only when `register` runs, never by importing this module.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from registry.digest import hash_file
from registry.errors import (
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from registry.prepared import Pin, read_pin
from registry.records import VersionRecord

LOAD_FORMAT = "model-registry"
OPTIONS = ("workers", "cache", "cache_dir", "device")
PREPARE_HINT = "make the folder with `model-registry prepare REF DIR` and serve DIR"

# Under "vllm": vLLM configures that logger tree, so these lines appear among its own.
log = logging.getLogger("vllm.model_registry")
_lock = threading.Lock()
_registered: type | None = None


def register() -> None:
    """The `vllm.general_plugins` entry point: register the `model-registry` load format with
    vLLM's loader registry (`register_model_loader`). vLLM runs it once per process; running it
    again does nothing."""
    global _registered
    with _lock:
        if _registered is not None:
            return
        loaders = importlib.import_module("vllm.model_executor.model_loader")
        cls = loader_class()
        loaders.register_model_loader(LOAD_FORMAT)(cls)
        _registered = cls


_class: type | None = None


def loader_class() -> type:
    """`RegistryModelLoader`: `RegistryLoaderMixin` over vLLM's real `BaseModelLoader`, made
    on first use (importing vLLM's loader module imports torch)."""
    global _class
    if _class is None:
        base = importlib.import_module(
            "vllm.model_executor.model_loader.base_loader"
        ).BaseModelLoader
        _class = type(
            "RegistryModelLoader",
            (RegistryLoaderMixin, base),
            {"__module__": __name__, "__doc__": RegistryLoaderMixin.__doc__},
        )
    return _class


class RegistryLoaderMixin:
    """The methods vLLM's `BaseModelLoader` leaves abstract, `download_model(model_config)` and
    `load_weights(model, model_config)`; `loader_class()` puts them over the real base class,
    whose `__init__(load_config)` sets `self.load_config`."""

    load_config: Any

    def download_model(self, model_config: Any) -> None:
        """Nothing to download: check that the folder is prepared, that its files are still the
        pinned version's and that the registry has that version (its manifest is read, no
        weight)."""
        self._checked_pin(model_config)

    def load_weights(self, model: Any, model_config: Any) -> None:
        """Stream the pinned version into `model.load_weights`, (name, tensor) pairs that
        verified, then check that every parameter was loaded (vLLM's own check, when it returns
        the names it loaded and the model is not quantized)."""
        folder, pin, _version = self._checked_pin(model_config)
        stream = self._stream(folder, pin)
        log.info("model-registry: loading %s (%s) for %s", pin.ref, pin.digest, folder)
        loaded = model.load_weights(_pinned(stream, pin))
        stats = stream.stats
        if stats is not None:
            log.info(
                "model-registry: loaded %s: %d tensors, %.1f MiB in %.2f s (%.1f MiB/s)",
                pin.ref,
                stats.tensors,
                stats.bytes / 2**20,
                stats.seconds,
                stats.throughput / 2**20,
            )
        if loaded is not None and getattr(model_config, "quantization", None) is None:
            _check_loaded(self, model, set(loaded))

    # -- helpers ---------------------------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        extra = getattr(self.load_config, "model_loader_extra_config", None) or {}
        if not isinstance(extra, Mapping):
            raise InvalidInputError(
                f"--model-loader-extra-config for {LOAD_FORMAT} must be a JSON object, "
                f"got {type(extra).__name__}"
            )
        unknown = sorted(set(extra) - set(OPTIONS))
        if unknown:
            raise InvalidInputError(
                f"--model-loader-extra-config: {LOAD_FORMAT} takes {', '.join(OPTIONS)}; "
                f"not {', '.join(map(str, unknown))}"
            )
        return _loader_options(extra)

    def _checked_pin(self, model_config: Any) -> tuple[Path, Pin, VersionRecord]:
        self._options()  # bad options are refused before the registry is contacted
        folder = Path(str(model_config.model))
        pin = _read_pin(folder)
        version = _version(folder, pin)
        _check_folder(folder, pin, version)
        return folder, pin, version

    def _stream(self, folder: Path, pin: Pin) -> Any:
        from registry import loader

        try:
            return loader.iter_tensors(pin.pinned_ref, **self._options())
        except NotFoundError as error:
            raise _gone(folder, pin, error) from None


def _loader_options(extra: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    workers = extra.get("workers")
    if workers is not None:
        if type(workers) is not int or workers < 1:
            raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
        options["workers"] = workers
    cache, cache_dir = extra.get("cache"), extra.get("cache_dir")
    if cache is not None and not isinstance(cache, bool):
        raise InvalidInputError(f"cache must be true or false, got {cache!r}")
    if cache_dir is not None:
        if not isinstance(cache_dir, str) or not cache_dir:
            raise InvalidInputError(f"cache_dir must be a path, got {cache_dir!r}")
        if cache is False:
            raise InvalidInputError("cache_dir with cache false: choose one")
        from registry.loader import Cache

        options["cache"] = Cache(Path(cache_dir).expanduser())
    elif cache is not None:
        options["cache"] = cache
    device = extra.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise InvalidInputError(f'device must be "cpu" or "cuda", got {device!r}')
    options["device"] = "cpu" if device == "cpu" else _current_cuda()
    return options


def _current_cuda() -> str:
    """The worker's own GPU: vLLM sets each rank's current device before it loads."""
    import torch

    if not torch.cuda.is_available():
        raise InvalidInputError('device "cuda": torch sees no CUDA device in this process')
    return f"cuda:{torch.cuda.current_device()}"


def _read_pin(folder: Path) -> Pin:
    try:
        return read_pin(folder)
    except RegistryError as error:
        # vLLM shows the message alone: the hint goes into it.
        hint = error.hint or PREPARE_HINT
        raise InvalidInputError(f"{LOAD_FORMAT}: {error.message} ({hint})", hint=hint) from None


def _version(folder: Path, pin: Pin) -> VersionRecord:
    """The pinned version, by its full digest, from the registry the environment names."""
    from registry.loader.sources import open_source

    source = open_source(None, cache=False)  # the manifest only, verified; no weight read
    try:
        version = source.resolve(pin.pinned_ref).version
    except NotFoundError as error:
        raise _gone(folder, pin, error) from None
    finally:
        source.close()
    if version.digest != pin.digest or version.name != pin.name:
        raise IntegrityError(
            f"{LOAD_FORMAT}: {folder} pins {pin.pinned_ref}, the registry resolved it to "
            f"{version.name}@{version.digest}"
        )
    return version


def _gone(folder: Path, pin: Pin, error: RegistryError) -> NotFoundError:
    return NotFoundError(
        f"{LOAD_FORMAT}: {folder} pins {pin.ref} ({pin.digest}), which the registry does not "
        f"have (any more): {error.message}. The folder is not loaded from another version: "
        "prepare it again from a version the registry has (`model-registry prepare REF DIR`)",
        hint="model-registry prepare REF DIR",
    )


def _check_folder(folder: Path, pin: Pin, version: VersionRecord) -> None:
    """The folder's files are the pinned version's (vLLM builds the model from its config), and
    the pin's streamed files are that version's weight files."""
    digests = {entry.path: entry.digest for entry in version.files}
    streamed = {entry.path: entry.digest for entry in pin.streamed}
    for path in pin.files:
        if path.endswith(".safetensors"):
            continue  # written by --include: the weights come from the registry all the same
        target = folder / path
        if path not in digests or not target.is_file() or hash_file(target) != digests[path]:
            raise IntegrityError(
                f"{LOAD_FORMAT}: {target} is not the file {pin.ref} has (changed or missing "
                "since `model-registry prepare`)",
                hint="run the same `model-registry prepare` again to restore it",
            )
    wrong = [path for path, digest in streamed.items() if digests.get(path) != digest]
    if wrong:
        raise IntegrityError(
            f"{LOAD_FORMAT}: {folder}/registry.json lists weight files {pin.ref} does not have: "
            + ", ".join(sorted(wrong)[:5]),
            hint="run the same `model-registry prepare` again",
        )


def _pinned(stream: Any, pin: Pin) -> Iterator[tuple[str, Any]]:
    """The stream's (name, tensor) pairs, once its version is checked to be the pinned one."""
    if stream.version.digest != pin.digest:
        raise IntegrityError(
            f"{LOAD_FORMAT}: the registry streamed {stream.version.ref} "
            f"({stream.version.digest}) for the pin {pin.pinned_ref}"
        )
    yield from stream


def _check_loaded(owner: Any, model: Any, loaded: set[str]) -> None:
    """The parameters the model did not load: vLLM's default loader's own check
    (`DefaultModelLoader.track_weights_loading`, which knows which parameters quantization
    and the KV cache make), or, without it, every parameter not loaded."""
    default = importlib.import_module("vllm.model_executor.model_loader").DefaultModelLoader
    track = getattr(default, "track_weights_loading", None)
    if track is not None:
        track(owner, model, loaded, quantized=False)
        return
    missing = {name for name, _ in model.named_parameters()} - loaded
    if missing:
        raise ValueError(f"Following weights were not initialized from checkpoint: {missing}")
