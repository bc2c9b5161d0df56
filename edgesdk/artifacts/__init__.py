"""Artifacts on disk: the formats registry, the TFLite and ONNX readers, the manifest, `edgesdk.inspect`, and
`edgesdk.load`, which runs an artifact as its source ran.

Imports the sources layer (for inputs) and the target families (for formats they add), never conversion,
devices or tuning.
"""
