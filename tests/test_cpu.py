from deeplsp_helpers import cpu

AVX2_LAPTOP = ["avx", "avx2", "fma", "sse4_1", "sse4_2"]
AVX512_VNNI_SERVER = [*AVX2_LAPTOP, "avx512bw", "avx512f", "avx512_vnni"]


def test_the_flags_of_this_machine_are_read_and_summarised():
    ext = cpu.cpu_vector_extensions()
    assert ext == sorted(set(ext)) and all(e == e.lower() and " " not in e for e in ext)
    line = cpu.describe_cpu()
    assert "float32 lanes" in line and "int8 dot products" in line
    assert cpu.float_vector_width() in (1, 4, 8, 16)


def test_vector_width_and_vnni_from_known_flag_sets():
    assert cpu.float_vector_width(AVX2_LAPTOP) == 8 and not cpu.has_vnni(AVX2_LAPTOP)
    assert cpu.float_vector_width(AVX512_VNNI_SERVER) == 16 and cpu.has_vnni(AVX512_VNNI_SERVER)
    assert cpu.has_vnni([*AVX2_LAPTOP, "avx_vnni"])  # Alder Lake and later laptops: VNNI on 256-bit vectors
    assert not cpu.has_vnni(["avx512f", "avx512bw"])  # Skylake-X: AVX-512 without VNNI saturates too
    assert "no VNNI" in cpu.describe_cpu(AVX2_LAPTOP) and "AVX2 (8 float32 lanes)" in cpu.describe_cpu(AVX2_LAPTOP)
    assert cpu.int8_pairs_saturate(AVX2_LAPTOP) and not cpu.int8_pairs_saturate(AVX512_VNNI_SERVER)
    assert not cpu.int8_pairs_saturate(["asimd", "asimddp"])  # Arm: int32 accumulation
    assert cpu.describe_cpu(["asimd"]).endswith("not x86)") and cpu.float_vector_width([]) == 1
