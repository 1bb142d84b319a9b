"""ONNX export: a decoder graph with KV cache whose quantized linears are com.microsoft::MatMulNBits (their
layout: edgeq/quant/layout.py)."""
