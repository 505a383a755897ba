"""vllm.model_executor.model_loader.base_loader.BaseModelLoader (0.33.0), its abstract methods
and load_model's order: build the model, then load_weights(model, model_config)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from vllm.config import LoadConfig, ModelConfig, VllmConfig


class BaseModelLoader(ABC):
    """Base class for model loaders."""

    def __init__(self, load_config: LoadConfig):
        self.load_config = load_config

    @abstractmethod
    def download_model(self, model_config: ModelConfig) -> None:
        raise NotImplementedError

    @abstractmethod
    def load_weights(self, model: Any, model_config: ModelConfig) -> None:
        raise NotImplementedError

    def load_model(
        self, vllm_config: VllmConfig, model_config: ModelConfig, prefix: str = ""
    ) -> Any:
        model = vllm_config.build()
        self.load_weights(model, model_config)
        return model
