"""edgeq: post-training weight quantization of LLMs on a laptop CPU, exported to ONNX MatMulNBits.

Public API (imported lazily, so `import edgeq` stays cheap and pulls in no torch by itself):
    quantize(model, out, QuantConfig(...)) -> checkpoint meta
    evaluate(model_or_checkpoint, text) -> perplexity report
    QuantConfig, MixedPrecision, QuantSpec, QuantizedWeight, load_checkpoint, save_checkpoint
"""
__version__ = "0.1.0"

_LAZY = {
    "quantize": ("edgeq.api", "quantize"),
    "evaluate": ("edgeq.api", "evaluate"),
    "QuantConfig": ("edgeq.config", "QuantConfig"),
    "MixedPrecision": ("edgeq.planning.mixed", "MixedPrecision"),
    "QuantSpec": ("edgeq.quant.grid", "QuantSpec"),
    "QuantizedWeight": ("edgeq.quant.qweight", "QuantizedWeight"),
    "load_checkpoint": ("edgeq.io.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("edgeq.io.checkpoint", "save_checkpoint"),
    "EdgeqError": ("edgeq.errors", "EdgeqError"),
}
__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'edgeq' has no attribute {name!r}")
    import importlib
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
