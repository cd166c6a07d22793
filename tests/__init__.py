"""The test suite. Imported before any test module or conftest, so the settings below reach
torch before it loads, in this process and in the processes the tests start."""

import os

# One instruction set for every machine, set before torch loads: AVX2 kernels in ATen, MKL's
# reproducible AVX2 branch for its matrix products, oneDNN capped at AVX2. Without this, a
# short causal-LM run (tests/test_golden.py) gives other figures on an AVX-512 machine than on
# AVX2, beyond the golden tolerance (dec-lora's round-2 loss 0.00130 / 0.00090 on two CPU
# kinds; 0.5% apart with the same base weights), and CI's machines vary. Every x86-64 runner
# of the last decade has AVX2; a variable already set is kept.
for key, value in {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2,STRICT",
    "DNNL_MAX_CPU_ISA": "AVX2",
}.items():
    os.environ.setdefault(key, value)
