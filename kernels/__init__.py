"""Run-time kernels of BinaryNet (spec ORIGINALS.md §4): XNOR-popcount GEMMs on CPU and GPU."""
