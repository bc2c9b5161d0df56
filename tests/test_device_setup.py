"""device setup's wheel download for a device's platform, and what a device too old for them is told."""

import pytest

from edgesdk import RuntimeMissing
from edgesdk.devices.device_setup import download_wheels, platform_tags
from edgesdk.progress import Progress

pytestmark = pytest.mark.slow  # asks the package index


def test_platform_tags_follow_the_devices_glibc():
    tags = platform_tags("aarch64", "glibc", "2.36")
    assert platform_tags("aarch64", "glibc", "2.12") == ["linux_aarch64"]
    assert tags[0] == "manylinux_2_36_aarch64" and tags[-3:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64",
                                                                 "linux_aarch64"]
    assert platform_tags("armv7l", "", "") == ["linux_armv7l"]


@pytest.mark.parametrize("python, glibc", [("3.7", "2.36"), ("3.11", "2.12")])
def test_a_device_no_runtime_wheel_fits_is_told_why(tmp_path, monkeypatch, python, glibc):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path))
    facts = {"machine": "aarch64", "python": python, "libc": "glibc", "libc_version": glibc}
    with pytest.raises(RuntimeMissing) as e:
        download_wheels(["numpy", "ai-edge-litert"], facts, Progress(quiet=True))
    msg = str(e.value)
    assert msg.startswith("No wheel of ") and f"CPython {python}, aarch64, glibc {glibc}" in msg and "Bookworm" in msg


def test_wheels_for_a_pi_are_aarch64_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESDK_CACHE", str(tmp_path))
    facts = {"machine": "aarch64", "python": "3.11", "libc": "glibc", "libc_version": "2.36"}
    wheels = download_wheels(["numpy", "ai-edge-litert==2.3.*"], facts, Progress(quiet=True))
    names = [w.name for w in wheels]
    assert any(n.startswith("ai_edge_litert-2.3") and n.endswith("aarch64.whl") for n in names)
    assert any(n.startswith("numpy-") and "aarch64" in n for n in names)
    assert all(w.parent == tmp_path / "wheels" / "cp311-aarch64-glibc2.36" for w in wheels)
