"""Evaluation: held-out text to windows to perplexity (heldout.py), scored by torch (nll.py) or onnxruntime.
This file imports nothing."""
