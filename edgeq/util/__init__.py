"""Small tools every layer uses: argument types (argtypes.py), atomic folders and JSON reads (paths.py), progress
bars (progress.py), resident memory (memory.py). torch-free; this file imports nothing."""
