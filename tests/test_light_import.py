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
    # edgesdk.deploy and edgesdk.check share their names with submodules; loading those must not
    # turn the functions into modules (it did: the second edgesdk.deploy(...) call raised TypeError)
    code = ("import edgesdk, edgesdk.deploy, edgesdk.check, edgesdk.tune\nfrom edgesdk.deploy import deploy_one\n"
            "print(edgesdk.deploy.__name__, edgesdk.check.__name__, edgesdk.tune.__name__, callable(edgesdk.convert))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["deploy", "check_model", "tune", "True"]
