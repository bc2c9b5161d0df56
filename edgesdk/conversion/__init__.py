"""convert: options and the recipe, the conversion run and its stages (`pipeline`), the detector tail left to the
host, the interface probe, and, when int8 misses the gate, the diagnosis and the recovery ladder; `check` runs
each family's route on a little data before the real conversion.

Sits above sources, judge and artifacts and calls the routes (`edgesdk.converters`) through their registry.
"""
