"""ONNX export: a decoder graph with KV cache whose quantized linears are com.microsoft::MatMulNBits."""

HEAD_WIDTHS = {"fp": None, "8": 8, "4": 4}  # --lm-head choices (quantize, export) -> bits (None: float head)
