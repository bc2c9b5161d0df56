"""The gate: an artifact's outputs against its source's on the same data, judged by what the model is for.

`validation` matches outputs and asks each output's task (`tasks/`: classify, detect, segment, sequence,
embedding, multi-label, regress) for figures with their uncertainty and a verdict. Imports nothing of the other
stages: what judges an artifact knows nothing of how it was made or where it runs.
"""
