"""Hugging Face transformers on the registry: a model version straight into a model ready for
`generate()`, and its tokenizer, with no plaintext weight on disk and no hub access.

    from registry.integrations.transformers import load_pretrained, load_tokenizer

    model = load_pretrained("team/llama:production")            # eval mode, on the CPU
    model = load_pretrained("team/llama@7", device="cuda:0", dtype=torch.bfloat16)
    tokenizer = load_tokenizer("team/llama:production")

What a load does:

1. The reference is resolved once: `prepare` writes the version's small files (config.json,
   generation_config.json, tokenizer files; never a weight) verified into a private temporary
   folder, or into `folder=`, beside the pin `registry.json` naming the version's digest.
   Passing a folder a `prepare` made instead of a reference loads exactly the version it pins
   (its files checked again against the signed manifest), so every worker and rank of a
   deployment loads the same digest whatever an alias says by then.
2. The config comes from that folder (`AutoConfig`, local files only); the model class from the
   config's `architectures` (or `model_class=`, a concrete or an `AutoModelFor...` class).
3. The weights are loaded by `registry.loader.load` by the pinned digest: every chunk
   authenticated, every shard's BLAKE3 checked, nothing handed on unless all of it verified.
4. The model is built by transformers' own `from_pretrained` on that state dict (config given,
   no checkpoint path): built on the meta device, never randomly initialised, each parameter
   taking the loaded tensor itself when its dtype and device already match (no second copy),
   with transformers' key renames, `dtype` (`None`: what `from_pretrained` does without one),
   keep-in-fp32 modules, tied weights, non-persistent buffers (rotary `inv_freq`) and `eval()`
   exactly as `from_pretrained` does them on a folder, so the logits are the same bit for bit.
5. Unlike `from_pretrained`, which warns and initialises randomly, a tensor the model lacks or
   has left uninitialised, or of another shape, is refused (`strict=False` only warns, like
   `from_pretrained`); nothing is returned.

transformers is imported on first use; without it: `pip install 'model-registry[transformers]'`.
Tested with transformers 4.57 and 5.x (the meta-device build and the no-copy adoption described
above are 5.x's `from_pretrained`; `dtype=None` is "auto" there and float32 in 4.x, as each
`from_pretrained` does; a GPU `device` on 4.x needs accelerate, as its `device_map` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from registry import loader
from registry.client import RemoteRegistry
from registry.digest import hash_file
from registry.errors import IntegrityError, InvalidInputError
from registry.prepared import PIN_NAME, Pin, read_pin
from registry.service import Registry

INSTALL_HINT = "pip install 'model-registry[transformers]'"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
ENV_URL = "MODEL_REGISTRY_URL"
ENV_TOKEN = "MODEL_REGISTRY_TOKEN"  # noqa: S105 - a variable name, not a secret
# from_pretrained's keywords that name where the weights or the config come from: here they
# always come from the version.
_NOT_TAKEN = frozenset(
    {
        "state_dict",
        "config",
        "device_map",
        "local_files_only",
        "output_loading_info",
        "cache_dir",
        "force_download",
        "revision",
        "token",
        "subfolder",
        "variant",
        "gguf_file",
        "use_safetensors",
        "trust_remote_code",
    }
)


def _transformers() -> Any:
    """The transformers module, or an ImportError saying which extra brings it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"registry.integrations.transformers needs transformers ({error}): {INSTALL_HINT}"
        ) from None
    return transformers


@contextlib.contextmanager
def _opened(registry: Registry | RemoteRegistry | None) -> Iterator[Registry | RemoteRegistry]:
    """The registry given, or the one the loader would use (MODEL_REGISTRY_URL with
    MODEL_REGISTRY_TOKEN, else the local home), closed afterwards."""
    if registry is not None:
        yield registry
        return
    url = os.environ.get(ENV_URL)
    opened: Registry | RemoteRegistry = (
        RemoteRegistry(url, os.environ.get(ENV_TOKEN, "")) if url else Registry.open()
    )
    with opened:
        yield opened


def prepared_folder(ref: str | os.PathLike[str]) -> Path | None:
    """The folder `ref` names when it is one a `prepare` made (a `Path`, or a string naming a
    directory with a `registry.json`); None when `ref` is a registry reference."""
    if isinstance(ref, os.PathLike):
        return Path(ref)
    if os.path.isdir(ref) and os.path.isfile(os.path.join(ref, PIN_NAME)):
        return Path(ref)
    return None


def _check_prepared(folder: Path, pin: Pin, registry: Registry | RemoteRegistry) -> None:
    """A prepared folder's files are still the version's: each against the signed manifest
    of the digest its pin names (a config edited since would build another model)."""
    manifest = registry.show(pin.pinned_ref).manifest
    entries = {entry.path: entry for entry in manifest.files}
    for path in pin.files:
        entry = entries.get(path)
        target = folder / path
        if entry is None:
            raise IntegrityError(f"{folder}: {path} is in its pin but not in {pin.ref}")
        if (
            not target.is_file()
            or target.stat().st_size != entry.size
            or hash_file(target) != entry.digest
        ):
            raise IntegrityError(
                f"{folder}: {path} is missing or differs from {pin.ref}'s since it was prepared",
                hint=f"prepare it again: `model-registry prepare {pin.ref} {folder}`",
                path=path,
            )


@contextlib.contextmanager
def _prepared(
    ref: str | os.PathLike[str],
    registry: Registry | RemoteRegistry,
    folder: str | os.PathLike[str] | None,
) -> Iterator[tuple[Path, Pin]]:
    """A folder with the version's small files, and its pin: the prepared folder `ref` names
    (checked), or `ref` prepared into `folder`, or into a temporary folder removed afterwards."""
    given = prepared_folder(ref)
    if given is not None:
        if folder is not None:
            raise InvalidInputError(
                f"{given} is already a prepared folder: folder= names where to prepare a reference"
            )
        pin = read_pin(given)
        _check_prepared(given, pin, registry)
        yield given, pin
        return
    if folder is not None:
        result = registry.prepare(str(ref), Path(folder))
        yield result.destination, result.pin
        return
    with tempfile.TemporaryDirectory(prefix="model-registry-") as scratch:
        result = registry.prepare(str(ref), Path(scratch) / "model")
        yield result.destination, result.pin


def _config(transformers: Any, folder: Path, pin: Pin, overrides: Mapping[str, Any]) -> Any:
    if not (folder / CONFIG_NAME).is_file():
        raise InvalidInputError(
            f"{pin.ref} has no {CONFIG_NAME}: it is not a transformers model folder",
            hint="push the folder `save_pretrained` wrote (config.json beside the shards)",
        )
    config, unused = transformers.AutoConfig.from_pretrained(
        str(folder), local_files_only=True, return_unused_kwargs=True, **overrides
    )
    return config, unused


def model_class_for(config: Any, model_class: Any = None) -> Any:
    """The class to build: `model_class` (an `AutoModelFor...` class is resolved against the
    config, as its `from_pretrained` does), else the config's one architecture when
    transformers has it, else the causal LM class for the config's model type."""
    transformers = _transformers()
    if model_class is None:
        architectures = getattr(config, "architectures", None) or []
        found = getattr(transformers, architectures[0], None) if len(architectures) == 1 else None
        if isinstance(found, type) and issubclass(found, transformers.PreTrainedModel):
            return found
        model_class = transformers.AutoModelForCausalLM
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        return model_class
    if type(config) not in mapping:
        raise InvalidInputError(
            f"{model_class.__name__} has no model for a {type(config).__name__} "
            f"(model_type {getattr(config, 'model_type', '?')!r})",
            hint="pass model_class= a class that builds this architecture",
        )
    from transformers.models.auto import auto_factory

    return auto_factory._get_model_class(config, mapping)  # type: ignore[no-untyped-call]


def _check_loading(
    info: Mapping[str, Any], pin: Pin, *, strict: bool, reshaped: bool = False
) -> None:
    """Refuse what `from_pretrained` only warns about: tensors missing (initialised randomly) or
    unexpected (ignored), and tensors of another shape (unless `ignore_mismatched_sizes` asked
    for them to be initialised instead, as `from_pretrained` does)."""
    problems = []
    mismatched = sorted(_mismatch(item) for item in info.get("mismatched_keys") or ())
    if mismatched and not reshaped:
        problems.append(f"of another shape than the model's: {_listed(mismatched)}")
    if strict:
        missing = sorted(info.get("missing_keys") or ())
        unexpected = sorted(info.get("unexpected_keys") or ())
        if missing:
            problems.append(f"missing (the model would initialise them): {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected (not in the model): {_listed(unexpected)}")
    errors = [str(message) for message in info.get("error_msgs") or ()]
    if errors:
        problems.append(f"errors: {_listed(errors)}")
    if problems:
        raise InvalidInputError(
            f"{pin.ref} does not fit the model: tensors " + "; ".join(problems),
            hint="is model_class= the version's architecture? strict=False only warns "
            "about missing and unexpected tensors, as from_pretrained does",
        )


def _mismatch(item: Any) -> str:
    """`name [stored shape] (the model's: [shape])` of a mismatched key (a name, or a tuple
    of the name and the two shapes, by transformers' version)."""
    if isinstance(item, str):
        return item
    name, *shapes = item
    if len(shapes) == 2 and all(hasattr(shape, "__iter__") for shape in shapes):
        return f"{name} {list(shapes[0])} (the model's: {list(shapes[1])})"
    return str(name)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _generation_config(transformers: Any, folder: Path) -> Any:
    """The version's generation_config.json, or None (the model keeps the one its config
    makes, as from_pretrained does when a folder has none)."""
    if not (folder / GENERATION_CONFIG_NAME).is_file():
        return None
    return transformers.GenerationConfig.from_pretrained(str(folder), local_files_only=True)


def load_pretrained(
    ref: str | os.PathLike[str],
    *,
    model_class: Any = None,
    device: Any = "cpu",
    dtype: Any = None,
    registry: Registry | RemoteRegistry | None = None,
    folder: str | os.PathLike[str] | None = None,
    strict: bool = True,
    options: loader.LoadOptions | None = None,
    **kwargs: Any,
) -> Any:
    """A version as a transformers model, in eval mode on `device`, ready for `generate()`.

    `ref`: a reference (`name@N`, `name:alias`, `name@blake3:...`), resolved once, or a folder
    made by `prepare` (the version its pin names). `model_class`: a model class or an
    `AutoModelFor...` class (default: the config's architecture). `device`: `cpu`, `cuda` or
    `cuda:N` (the loader reads straight onto it). `dtype`: a torch dtype or `"auto"`; None does
    what `from_pretrained` does without one. `registry`: a `Registry` or `RemoteRegistry`
    (default: MODEL_REGISTRY_URL, else the local home). `folder`: prepare the small files there
    and keep them (default: a temporary folder, removed). `strict`: refuse missing and unexpected
    tensors (tensors of another shape are always refused). `options`: the loader's
    `LoadOptions` (workers, cache, progress, verify; device and dtype are set here). Other
    keyword arguments go to `from_pretrained` (`attn_implementation="eager"`, config overrides).
    `model.name_or_path` is the version's `name@N`."""
    transformers = _transformers()
    taken = sorted(_NOT_TAKEN & set(kwargs))
    if taken:
        raise TypeError(f"load_pretrained() does not take {', '.join(taken)}: the version sets it")
    import torch

    target = torch.device(device)
    if target.type == "cuda" and target.index is None and torch.cuda.is_available():
        target = torch.device("cuda", torch.cuda.current_device())
    chosen = dataclasses.replace(
        options or loader.LoadOptions(), device=str(target), dtype=None, framework="pt"
    )
    with _opened(registry) as opened, _prepared(ref, opened, folder) as (where, pin):
        config, rest = _config(transformers, where, pin, kwargs)
        cls = model_class_for(config, model_class)
        generation = _generation_config(transformers, where)
        state = loader.load(pin.pinned_ref, registry=opened, options=chosen)
        if state.version.digest != pin.digest:
            raise IntegrityError(
                f"{pin.ref}: the loader read {state.version.digest}, the pin says {pin.digest}"
            )
        weights = dict(state)
        del state
        extra: dict[str, Any] = {} if target.type == "cpu" else {"device_map": {"": target}}
        if dtype is not None:
            extra["dtype"] = dtype
        # Shapes are checked below, where the message names the tensors.
        reshaped = bool(rest.pop("ignore_mismatched_sizes", False))
        model, info = cls.from_pretrained(
            None,
            config=config,
            state_dict=weights,
            local_files_only=True,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            **extra,
            **rest,
        )
        del weights
    _check_loading(info, pin, strict=strict, reshaped=reshaped)
    if generation is not None and model.can_generate():
        model.generation_config = generation  # what from_pretrained reads from a folder
    model.config.name_or_path = model.name_or_path = pin.ref
    return model


def load_tokenizer(
    ref: str | os.PathLike[str],
    *,
    registry: Registry | RemoteRegistry | None = None,
    folder: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """The version's tokenizer (`AutoTokenizer` on its own files, local files only): `ref` and
    `folder` as for `load_pretrained`; other keyword arguments go to `AutoTokenizer`."""
    transformers = _transformers()
    with _opened(registry) as opened, _prepared(ref, opened, folder) as (where, pin):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(where), local_files_only=True, **kwargs
            )
        except (OSError, ValueError) as error:
            raise InvalidInputError(
                f"{pin.ref} has no tokenizer transformers can load: {error}",
                hint="push the folder with the files the tokenizer's save_pretrained wrote",
            ) from None
    return tokenizer


__all__ = ["load_pretrained", "load_tokenizer", "model_class_for", "prepared_folder"]
