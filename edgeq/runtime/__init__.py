"""What runs on the device: onnxruntime sessions and decoding loops. numpy + onnxruntime only, no torch."""
