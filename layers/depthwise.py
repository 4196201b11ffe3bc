"""Depthwise 2-D convolution kernels (group == channels), for conv.py's Convolution layer.
(Placeholder: filled in below.)"""
import numpy as np
from numba import njit


@njit(cache=True)
def output_range(n_out, stride, offset, size):
    """The outputs o in [lo, hi) whose input o * stride + offset lies in [0, size)."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = 0
    if size - offset > 0:
        hi = (size - offset + stride - 1) // stride
    hi = min(hi, n_out)
    return min(lo, hi), hi
