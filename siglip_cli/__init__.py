"""siglip: SigLIP vision-transformer embeddings from the command line, with a from-scratch PyTorch model.

    from siglip_cli import SiglipVisionConfig, SiglipVisionModel
    model = SiglipVisionModel.from_pretrained("google/siglip-base-patch16-224")
    patches = model(pixel_values)                  # (B, 196, 768)
    pooled = model.embed(pixel_values, pool="map")  # (B, 768)

Nothing heavy is imported until it is used, so `siglip --help` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig", "SiglipVisionModel", "SiglipTextModel",
           "SiglipModel", "Embedder", "Siglip", "SiglipError", "__version__"]

_LAZY = {
    "SiglipConfig": "config",
    "SiglipTextConfig": "config",
    "SiglipVisionConfig": "config",
    "SiglipVisionModel": "model",
    "SiglipTextModel": "text_model",
    "SiglipModel": "text_model",
    "Embedder": "embed",
    "Siglip": "text",
    "SiglipError": "errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
