"""The CPU a process runs on, as far as numerics care: the instruction sets that change which kernels
onnxruntime and PyTorch take (and so the bytes a model computes), read from /proc/cpuinfo."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# Flags whose presence switches GEMM/elementwise kernels (MLAS, oneDNN): INT8 dot products (VNNI), AMX tiles,
# AVX-512 widths. Others (sse, aes, ...) do not change a model's numbers and would only add noise to a comparison.
NUMERIC_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                 "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """The first processor's model name and its numeric flags (NUMERIC_FLAGS, in that order) from cpuinfo text."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86 | ARM spelling
            flags = set(value.split())
    return {"model": model or platform.processor() or platform.machine(),
            "flags": [flag for flag in NUMERIC_FLAGS if flag in flags]}


def cpu_kind(flags: list[str]) -> str:
    """A short name of the instruction sets in `flags` that decide INT8/FP32 kernels, e.g. "avx512_vnni+amx"."""
    if "amx_int8" in flags or "amx_tile" in flags:
        return "avx512_vnni+amx"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx_vnni" in flags:
        return "avx2+avx_vnni"
    if "avx2" in flags:
        return "avx2"
    return "other"


@lru_cache(maxsize=1)
def cpu_facts() -> dict[str, Any]:
    """This host's CPU: model name, machine, numeric flags and their kind (see cpu_kind)."""
    facts = parse_cpuinfo(CPUINFO.read_text() if CPUINFO.is_file() else "")
    return {"machine": platform.machine(), **facts, "kind": cpu_kind(facts["flags"])}


def same_numerics(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two cpu_facts records have the same machine and numeric flags (same kernels, same bytes)."""
    return a.get("machine") == b.get("machine") and sorted(a.get("flags", [])) == sorted(b.get("flags", []))
