"""Provenance facts every result.json records (DESIGN.md, "Tracking and provenance")."""

from __future__ import annotations

import json

import torch

from harness.runtime import host_facts, parse_cpuinfo

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
flags\t\t: fpu vme sse2 avx2 avx512f fma avx2

processor\t: 1
model name\t: Some Other CPU
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes
CPU part\t: 0xd0c
"""


def test_cpuinfo_gives_the_first_processors_model_and_sorted_unique_flags():
    assert parse_cpuinfo(X86_CPUINFO) == {"cpu_model": "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
                                          "cpu_flags": ["avx2", "avx512f", "fma", "fpu", "sse2", "vme"]}
    assert parse_cpuinfo(ARM_CPUINFO) == {"cpu_model": "0xd0c", "cpu_flags": ["aes", "asimd", "evtstrm", "fp"]}
    assert parse_cpuinfo("") == {}


def test_host_facts_name_the_cpu_kernels_threads_and_determinism_and_are_json():
    torch.set_num_threads(1)
    facts = host_facts(torch.device("cpu"))
    assert isinstance(facts["cpu_model"], str) and facts["cpu_model"]
    assert isinstance(facts["cpu_flags"], list) and all(isinstance(f, str) for f in facts["cpu_flags"])
    assert facts["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["torch_threads"] == 1 and isinstance(facts["torch_interop_threads"], int)
    assert isinstance(facts["thread_env"], dict) and isinstance(facts["deterministic_algorithms"], bool)
    assert isinstance(facts["mkldnn_enabled"], bool)
    for key in ("mkl_version", "onednn_version", "cuda_version", "cudnn_version"):
        assert key in facts and (facts[key] is None or isinstance(facts[key], str))
    if torch.backends.mkldnn.is_available():
        assert facts["onednn_version"] and facts["onednn_version"][0].isdigit()
    assert json.loads(json.dumps(facts)) == facts
    torch.set_num_threads(2)  # read on every call, not cached with the CPU facts
    assert host_facts(torch.device("cpu"))["torch_threads"] == 2
