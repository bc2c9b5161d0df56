"""The house's seams: routes declared as data and found by the registry, layers that import only downwards."""

import ast
from pathlib import Path

from edgesdk.converters import ROUTE_MODULES, get_route, routes
from edgesdk.converters.route import Route

ROOT = Path(__file__).resolve().parents[1]


def test_every_route_is_declared_once_and_found_by_framework_and_format():
    found = routes()
    assert set(found) >= {("keras", "tflite"), ("keras", "onnx"), ("onnx", "onnx"), ("onnx", "tflite"),
                          ("torch", "tflite"), ("torch", "onnx"), ("onnx", "rknn"), ("keras", "rknn"),
                          ("torch", "rknn")}
    for (framework, fmt), route in found.items():
        assert isinstance(route, Route) and route.format == fmt and framework in route.sources
        assert callable(route.convert) and route.auto_methods[0] in route.calibration_methods
        assert set(route.auto_methods) <= set(route.calibration_methods)
    # what the routes share is declared once: the ONNX routes quantize as ONNX sources are
    assert found[("keras", "onnx")].requantize is found[("onnx", "onnx")].convert
    assert found[("torch", "onnx")].trainer == found[("torch", "tflite")].trainer == "torch_qat"
    assert get_route("onnx", "onnx") is found[("onnx", "onnx")]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            yield (node.module or ""), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []


def test_core_code_never_probes_or_imports_a_specific_route():
    """A capability is a Route field with its default in converters/route.py; no core module reads a route
    module's attributes or imports one."""
    allowed = set()
    for path in sorted((ROOT / "edgesdk").rglob("*.py")):
        text = path.read_text()
        for probe in ("getattr(route", "hasattr(route", "getattr(self.route"):
            assert probe not in text, f"{path.name} probes a route: {probe}"
        for module, names in _imports(path):
            for route_module in ROUTE_MODULES:
                if module.endswith(f"converters.{route_module}") or (
                        module.endswith("converters") and route_module in names):
                    assert (path.name, route_module) in allowed, f"{path.name} imports the route {route_module}"


def test_the_runner_imports_nothing_of_ours():
    """The on-device runner is one standalone file: numpy and the runtime, nothing of edgesdk."""
    for module, _ in _imports(ROOT / "targets" / "runner.py"):
        assert not module.startswith(("edgesdk", ".")), module


def test_no_core_module_names_a_familys_own_format():
    """Rockchip's .rknn lives with the Rockchip family (targets/rockchip.py declares it, its reader beside it):
    a new family with a new format touches no core module."""
    for path in sorted((ROOT / "edgesdk").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(
            n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert "rknn" not in node.value.lower(), f"{path.name}: {node.value[:80]!r}"


def test_converters_and_targets_never_import_the_device_side():
    """The layers: what converts and what judges a target never reach for SSH, deploy, bench or results."""
    device_side = ("deploy", "ssh", "device_setup", "bench", "results", "report", "tune")
    for folder in ("converters", "targets"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for module, names in _imports(path):
                parts = module.split(".")
                assert not (parts[0] in ("edgesdk", "") and set(parts[1:]) & set(device_side)), (path.name, module)
                assert not (module in ("edgesdk", "") and set(names) & set(device_side)), (path.name, names)
