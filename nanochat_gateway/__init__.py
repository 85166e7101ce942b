"""nanochat-gateway: an OpenAI-compatible streaming server for nanochat checkpoints.

Public API:
- ``load_model(source, device="cpu", dtype="float32")``: load any nanochat checkpoint generation.
- ``create_app(settings)``: build the aiohttp application.
- ``__version__``
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_app", "load_model"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `import nanochat_gateway` stays cheap (no torch/aiohttp until needed).
    if name == "load_model":
        from nanochat_gateway.model.loader import load_model

        return load_model
    if name == "create_app":
        from nanochat_gateway.app import create_app

        return create_app
    raise AttributeError(f"module 'nanochat_gateway' has no attribute {name!r}")
