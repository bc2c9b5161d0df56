"""The device side: SSH sessions, deploy (push the standalone runner and the artifact, probe, time), device set-up,
the local benchmark, the results store and its reports.

Imports artifacts and the target families, never conversion or tuning; converters and targets never import
this package.
"""
