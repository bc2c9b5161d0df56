"""`import edgesdk` and `edgesdk --help` never load a framework."""

import subprocess
import sys

HEAVY = ("tensorflow", "torch", "onnxruntime", "keras", "tf_keras", "ai_edge_litert")


def test_import_edgesdk_loads_no_framework():
    code = ("import sys, edgesdk; edgesdk.load_profile('rpi4'); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_loads_no_framework():
    code = ("import sys; from edgesdk.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "convert" in out and "bench" in out and "profiles" in out


def test_api_functions_are_not_shadowed_by_their_modules():
    # the API functions live in stage modules whose names differ from theirs: loading every module of the
    # package leaves edgesdk.deploy, .check, .tune and .convert callable (a module named like its function
    # replaced it on the package once: the second edgesdk.deploy(...) call raised TypeError)
    code = ("import edgesdk, pkgutil, importlib\n"
            "for m in pkgutil.walk_packages(edgesdk.__path__, 'edgesdk.'):\n"
            "    if not m.name.startswith(('edgesdk.converters', 'edgesdk.targets')): importlib.import_module(m.name)\n"
            "print(*[getattr(edgesdk, n).__name__ for n in ('deploy', 'check', 'tune', 'convert', 'load')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["deploy", "check_model", "tune", "convert", "load"]
