"""Grid and weights: the uniform grid and its specs (grid.py), QuantizedWeight (qweight.py), bit packing (pack.py),
MatQuant's nested slicing (nesting.py) and the MatMulNBits layout (layout.py). No model knowledge lives here;
pack, nesting and layout stay numpy-importable for the runtime (this file imports nothing)."""
