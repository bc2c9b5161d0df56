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


# What each layer never imports, function-level imports included. The stages are folders of edgesdk/:
# judge knows nothing of how an artifact was made or where it runs; what converts (converters, targets) never
# reaches for SSH, deploy, bench or results; the device side never converts; nothing below the CLI and tune
# imports them.
TOP = ("edgesdk.tuning", "edgesdk.cli")
NEVER = {
    "edgesdk.judge": ("edgesdk.sources", "edgesdk.artifacts", "edgesdk.conversion", "edgesdk.devices",
                      "edgesdk.converters", "edgesdk.targets", *TOP),
    "edgesdk.sources": ("edgesdk.artifacts", "edgesdk.conversion", "edgesdk.devices", *TOP),
    "edgesdk.artifacts": ("edgesdk.conversion", "edgesdk.devices", "edgesdk.converters", *TOP),
    "edgesdk.devices": ("edgesdk.sources", "edgesdk.judge", "edgesdk.conversion", "edgesdk.converters", *TOP),
    "edgesdk.conversion": TOP,
    "edgesdk.converters": ("edgesdk.devices", *TOP),
    "edgesdk.targets": ("edgesdk.devices", *TOP),
}
FOLDERS = {"edgesdk.converters": ROOT / "converters", "edgesdk.targets": ROOT / "targets"}


def _modules():
    """(dotted name, path) of every module of ours, converters/ and targets/ under their installed names."""
    for package, folder in [("edgesdk", ROOT / "edgesdk"), *FOLDERS.items()]:
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _resolved_imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            yield from (f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_each_layer_imports_only_what_it_may():
    checked = set()
    for name, path in _modules():
        for layer, forbidden in NEVER.items():
            if name == layer or name.startswith(layer + "."):
                checked.add(layer)
                for imported in _resolved_imports(name, path):
                    assert not any(imported == f or imported.startswith(f + ".") for f in forbidden), (
                        f"{path.relative_to(ROOT)} imports {imported}: the {layer} layer never does")
    assert checked == set(NEVER)  # every layer exists and was read


def test_the_stages_are_folders_and_no_module_shares_an_api_functions_name():
    import edgesdk
    for stage in ("sources", "judge", "artifacts", "conversion", "devices"):
        assert (ROOT / "edgesdk" / stage / "__init__.py").is_file(), stage
    for name, _ in _modules():
        first = name.split(".")[1] if "." in name else None
        assert first not in edgesdk._API, f"{name} would replace the function edgesdk.{first} once loaded"
