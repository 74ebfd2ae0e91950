"""The ONNX runtime: onnxruntime on CPU, the framework-free inspection, the shared-weights graph."""
