"""The route interface: what a conversion route from a framework to an artifact format can do, as data.

Each route module (converters/<framework>_<format>.py) ends with one `ROUTE = Route(...)`: its functions and
its capabilities. The registry (edgesdk.converters) finds routes by (framework, format); core code reads
these fields and calls these methods, never a route module's attributes, so a capability's default is written
once, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Route:
    format: str
    # framework -> what the route imports for it, and the extra that brings each: a route whose packages are
    # missing says which extra to install before it starts (one route module may take several frameworks)
    sources: dict
    # convert(source, recipe, calibration, progress=None, profile=None) -> the artifact's bytes
    convert: Callable
    # prepare_source(source, recipe, calibration, step=None): a one-time step before convert (a private
    # toolchain, an intermediate graph), said with progress messages; None: nothing to prepare
    prepare_source: Callable | None = None
    # requantize(source, recipe, calibration, progress=None, profile=None): the same route again with another
    # recipe (the recovery ladder, the auto choices, the diagnosis); None: convert again
    requantize: Callable | None = None
    # debug(source, recipe, calibration, artifact_path, x) -> rows: the layers that lose the most to
    # quantization, worst first (edgesdk.conversion.diagnosis); None: the route has no debugger
    debug: Callable | None = None
    # --calibration-method values it takes, the recovery ladder's order; auto measures auto_calibration
    # (the first always, the others where int8 costs something; default: the first of calibration_methods)
    calibration_methods: tuple = ("minmax",)
    auto_calibration: tuple | None = None
    multi_input: bool = False          # models with several inputs
    int16_activations: bool = False    # --activations int16 (int8 weights beside them)
    int16_keeps_float: bool = True     # ... with layers kept in float too
    excludes_layers: bool = False      # --exclude-nodes/--exclude-op-types
    corrected_rounding: bool = False   # --weight-rounding corrected
    # a detector head's post-processing can be left to the host (edgesdk.conversion.host_tail); a route that
    # converts its framework's model (not the ONNX graph) stops that model where the ONNX graph is cut:
    # cut(source, outputs, calibration)
    cuts_tails: bool = False
    cut: Callable | None = None
    # what a failed diagnosis tells the user to do; after layers were measured one by one, measured_hint
    diagnosis_hint: str = ""
    measured_hint: str | None = None
    # quantization-aware training for this route: the module (edgesdk.converters.<name>) with
    # unavailable(source) and train(source, data, recipe, teacher)
    trainer: str | None = None

    @property
    def auto_methods(self) -> tuple:
        return self.auto_calibration or self.calibration_methods[:1]

    @property
    def hint_after_measuring(self) -> str:
        return self.measured_hint if self.measured_hint is not None else self.diagnosis_hint

    def prepare(self, source, recipe, calibration, step=None) -> None:
        if self.prepare_source is not None:
            self.prepare_source(source, recipe, calibration, step=step)

    def again(self, source, recipe, calibration, progress=None, profile=None) -> bytes:
        """The artifact's bytes for another recipe, reusing what the first conversion made where it can."""
        make = self.requantize or self.convert
        return make(source, recipe, calibration, progress=progress, profile=profile)

    def worst_layers(self, source, recipe, calibration, artifact_path, x) -> list:
        return self.debug(source, recipe, calibration, artifact_path, x) if self.debug else []
