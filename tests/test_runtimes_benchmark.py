"""benchmarks/runtimes.py's record of the CPU: the int8 caveat of CPUs without VNNI."""

import pytest

from benchmarks import runtimes

NONE = dict.fromkeys(runtimes.CPU_FEATURES, False)


@pytest.mark.parametrize("feature", runtimes.INT8_FEATURES)
def test_an_int8_dot_product_cpu_has_no_caveat(feature):
    assert runtimes.int8_caveat({**NONE, feature: True}) is None


def test_a_cpu_without_vnni_is_named_as_such():
    # This session's AMD EPYC: AVX2 only; its int8 ratios must not read as the VNNI targets.
    assert "say nothing about the int8 targets" in runtimes.int8_caveat(NONE)
    # BF16 or AMX tiles without int8 are no int8 dot product.
    assert runtimes.int8_caveat({**NONE, "avx512_bf16": True, "amx_bf16": True}) is not None
    assert "unknown" in runtimes.int8_caveat(None)


def test_the_features_are_read_from_cpuinfo():
    features = runtimes.cpu_features()
    assert features is None or set(features) == set(runtimes.CPU_FEATURES)
    assert all(isinstance(v, bool) for v in (features or {}).values())
