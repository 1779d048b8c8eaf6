import json
import subprocess
import sys

import pytest

from siglip_cli import hardware

ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 9R14
flags		: fpu sse2 avx f16c avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx512_bitalg
"""
SAPPHIRE_RAPIDS = """model name	: Intel(R) Xeon(R) Platinum 8488C
flags		: avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
CASCADE_LAKE = """model name	: Intel(R) Xeon(R) Platinum 8259CL CPU @ 2.50GHz
flags		: avx2 fma avx512f avx512bw avx512_vnni
"""
SKYLAKE = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx2 fma avx512f avx512bw\n"
HASWELL = "model name\t: Intel(R) Core(TM) i7-4770\nflags\t\t: sse4_2 avx avx2 fma\n"
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-1260P\nflags\t\t: avx2 fma avx_vnni\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd asimddp sve i8mm bf16 sveb16\n"
OLD = "model name\t: Intel(R) Core(TM)2 Duo\nflags\t\t: sse sse2 ssse3\n"


@pytest.mark.parametrize("text, machine, klass, best", [
    (SAPPHIRE_RAPIDS, "x86_64", "amx", "bfloat16"),
    (ZEN4, "x86_64", "avx512-bf16", "int8"),
    (CASCADE_LAKE, "x86_64", "avx512-vnni", "int8"),
    (SKYLAKE, "x86_64", "avx2", "int8"),
    (HASWELL, "x86_64", "avx2", "int8"),
    (ALDER_LAKE, "x86_64", "avx2", "int8"),
    (GRAVITON3, "aarch64", "arm-bf16", "bfloat16"),
    (OLD, "x86_64", "other", "float32"),
])
def test_each_cpu_class_gets_its_advice(text, machine, klass, best):
    _, flags = hardware.parse_cpuinfo(text)
    assert hardware.classify(flags, machine) == klass
    advice = hardware.advise(klass)
    assert advice["best"] == best and advice["order"][0] == best
    assert advice["option"] == hardware.OPTION[best]
    assert advice["closest_fast"] in advice["order"] and advice["closest_fast"] != "int8"


def test_cpuinfo_parsing_reads_the_model_and_the_first_cpus_flags():
    model, flags = hardware.parse_cpuinfo(ZEN4 + "\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: sse\n")
    assert model == "AMD EPYC 9R14"
    assert {"avx512_bf16", "avx512_vnni", "avx2"} <= flags and "sse" not in flags
    assert hardware.parse_cpuinfo("") == ("", set())


def test_a_gpu_decides_the_class_and_an_old_one_gets_float16():
    _, flags = hardware.parse_cpuinfo(HASWELL)
    ampere = {"name": "A100", "compute_capability": "8.0", "bf16": True}
    turing = {"name": "T4", "compute_capability": "7.5", "bf16": False}
    assert hardware.classify(flags, "x86_64", ampere) == "gpu"
    assert hardware.advise("gpu", ampere)["best"] == "bfloat16"
    assert hardware.advise("gpu", turing)["order"] == ["float16", "float32", "bfloat16"]
    assert hardware.advise("gpu", turing)["closest_fast_option"] == "--dtype float16"


def test_report_and_render_from_a_given_cpuinfo():
    info = hardware.report(cpuinfo=SAPPHIRE_RAPIDS)
    json.dumps(info)  # what --json prints
    assert info["cpu"].startswith("Intel(R) Xeon(R) Platinum 8488C")
    assert info["features"]["amx_bf16"] and info["features"]["avx512_bf16"] and not info["features"]["avx_vnni"]
    if info["gpu"] is None:
        assert info["class"] == info["cpu_class"] == "amx"
    lines = hardware.render(info)
    text = "\n".join(lines)
    assert "amx_bf16" in lines[1] and "avx_vnni" in lines[2]  # has, lacks
    assert "fastest:   --dtype bfloat16" in text or info["gpu"] is not None
    assert all(len(line) < 200 for line in lines)
    zen4 = "\n".join(hardware.render(hardware.report(cpuinfo=ZEN4)))
    if "gpu:" not in zen4:
        assert "fastest:   --quantize int8 (then bfloat16, float32)" in zen4
        assert "closer:    --dtype bfloat16" in zen4


def test_this_machines_report_imports_no_torch():
    code = ("import json, sys\nfrom siglip_cli import hardware\ninfo = hardware.report()\n"
            "assert 'torch' not in sys.modules\nprint(json.dumps(info))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["torch_cpu_capability"] is None and info["gpu"] is None  # torch not asked
    assert info["class"] in hardware.ADVICE and info["cores"] >= 1


def test_with_torch_imported_its_capability_is_reported():
    import torch

    info = hardware.report()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (info["gpu"] is not None) == torch.cuda.is_available()


def test_on_a_gpu_doctor_says_where_jpegs_are_decoded(monkeypatch):
    """With a GPU, the report says whether torchvision can decode JPEGs there (embed does), or how to get it."""
    ampere = {"name": "A100", "compute_capability": "8.0", "bf16": True}
    monkeypatch.setattr(hardware, "_torch_facts", lambda probe: ("AVX512", ampere))
    monkeypatch.setattr(hardware, "_gpu_jpeg", lambda: "0.29.2")
    text = "\n".join(hardware.render(hardware.report(cpuinfo=ZEN4)))
    assert "gpu:       A100 (compute capability 8.0)" in text
    assert "jpeg:      decoded on the GPU (torchvision 0.29.2, nvJPEG)" in text
    monkeypatch.setattr(hardware, "_gpu_jpeg", lambda: None)
    info = hardware.report(cpuinfo=ZEN4)
    assert info["gpu_jpeg_decode"] is None
    assert 'jpeg:      decoded on the CPU: pip install "siglip-cli[gpu]" to decode on the GPU' in hardware.render(info)
    monkeypatch.setattr(hardware, "_torch_facts", lambda probe: (None, None))
    assert not any(line.startswith("jpeg:") for line in hardware.render(hardware.report(cpuinfo=ZEN4)))
