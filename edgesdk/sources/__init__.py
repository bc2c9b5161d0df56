"""What comes in: the source model (Keras, PyTorch, ONNX, SavedModel; loaded through the routes' loaders, which
check trust first) and the data it is calibrated, validated and fine-tuned on.

Imports the judge layer and the shared modules at the top of the package, never conversion, devices or tuning.
"""
