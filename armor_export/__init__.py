"""armor-export: split an ARMOR checkpoint into the bundle's ONNX graphs, verified against PyTorch."""

__version__ = "0.1.0"
