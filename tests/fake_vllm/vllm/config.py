"""vllm.config's LoadConfig and ModelConfig: the fields the loaders read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoadConfig:
    load_format: str = "auto"
    model_loader_extra_config: dict[str, Any] = field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        self.load_format = self.load_format.lower()  # vLLM's field validator


@dataclass
class ModelConfig:
    model: str
    quantization: str | None = None


@dataclass
class VllmConfig:
    """What BaseModelLoader.load_model reads; `build` stands in for initialize_model."""

    model_config: ModelConfig
    load_config: LoadConfig
    build: Any = None
