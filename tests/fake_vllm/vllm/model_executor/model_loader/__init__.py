"""vllm.model_executor.model_loader (0.33.0): the load-format registry, register_model_loader,
get_model_loader, get_model, and DefaultModelLoader's check of the weights a model loaded."""

from __future__ import annotations

from typing import Any

from vllm.config import LoadConfig, ModelConfig, VllmConfig
from vllm.model_executor.model_loader.base_loader import BaseModelLoader


class DefaultModelLoader(BaseModelLoader):
    def download_model(self, model_config: ModelConfig) -> None:
        raise NotImplementedError("the stand-in reads no checkpoint")

    def load_weights(self, model: Any, model_config: ModelConfig) -> None:
        raise NotImplementedError("the stand-in reads no checkpoint")

    def track_weights_loading(
        self, model: Any, loaded_weights: set[str] | None, quantized: bool = False
    ) -> None:
        weights_to_load = {name for name, _ in model.named_parameters()}
        if loaded_weights is not None:
            weights_not_loaded = weights_to_load - loaded_weights
            if weights_not_loaded:
                raise ValueError(
                    f"Following weights were not initialized from checkpoint: {weights_not_loaded}"
                )


_LOAD_FORMAT_TO_MODEL_LOADER: dict[str, type[BaseModelLoader]] = {
    "auto": DefaultModelLoader,
    "safetensors": DefaultModelLoader,
}


def register_model_loader(load_format: str):
    def _wrapper(model_loader_cls):
        if not issubclass(model_loader_cls, BaseModelLoader):
            raise ValueError("The model loader must be a subclass of `BaseModelLoader`.")
        _LOAD_FORMAT_TO_MODEL_LOADER[load_format] = model_loader_cls
        return model_loader_cls

    return _wrapper


def get_model_loader(load_config: LoadConfig) -> BaseModelLoader:
    load_format = load_config.load_format
    if load_format not in _LOAD_FORMAT_TO_MODEL_LOADER:
        raise ValueError(f"Load format `{load_format}` is not supported")
    return _LOAD_FORMAT_TO_MODEL_LOADER[load_format](load_config)


def get_model(*, vllm_config: VllmConfig, prefix: str = "") -> Any:
    loader = get_model_loader(vllm_config.load_config)
    return loader.load_model(
        vllm_config=vllm_config, model_config=vllm_config.model_config, prefix=prefix
    )
