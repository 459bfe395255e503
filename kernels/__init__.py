"""Triton kernels for the hot conv and matmul paths (later milestone).

Nothing here is imported by the CPU path: torch and triton are optional extras.
"""
