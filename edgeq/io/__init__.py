"""Model and checkpoint I/O: where a float model comes from (models.py: bundled, folder, Hub, GGUF; streamed
block loading), the families as data (architectures.py), GGUF de-quantized to the float cache (gguf_float.py),
safetensors read by mapping and written in chunks, the Hub, the one pass that validates a model (validate.py),
what a MODEL argument is (inputs.py), the output head as a quantized linear (head.py), and quantized checkpoints
(checkpoint.py). This file imports nothing."""
