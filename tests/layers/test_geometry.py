"""layers/geometry.py: Caffe's window parameters for convolution and pooling (values and the errors
its CHECKs give), the output sizes, and output_range against a brute-force count."""
import itertools

import pytest
from google.protobuf import text_format

from numcaffe.layers.geometry import c_div, conv_output_shape, conv_window, output_range, pool_window, pooled_size
from numcaffe.net.errors import ConfigError
from numcaffe.net.proto import caffe_pb2
from tests.layers.test_vision import make


class _Layer:
    def describe(self):
        return "layer 'w' (Test)"


def conv(text, num_spatial=2):
    return conv_window(_Layer(), text_format.Parse(text, caffe_pb2.ConvolutionParameter()), num_spatial)


def pool(text):
    return pool_window(_Layer(), text_format.Parse(text, caffe_pb2.PoolingParameter()))


@pytest.mark.parametrize("text,num_spatial,want", [
    ("kernel_size: 3", 2, ([3, 3], [1, 1], [0, 0], [1, 1])),                      # defaults
    ("kernel_size: 3 kernel_size: 1 kernel_size: 2 stride: 2 pad: 1", 3, ([3, 1, 2], [2] * 3, [1] * 3, [1] * 3)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1", 2, ([3, 2], [2, 1], [1, 0], [1, 1])),
    ("kernel_size: 3 dilation: 1 dilation: 3 pad: 2 pad: 0", 2, ([3, 3], [1, 1], [2, 0], [1, 3])),
    ("kernel_size: 5", 1, ([5], [1], [0], [1])),
    ("", 0, ([], [], [], [])),                                                    # no spatial axes: nothing to read
])
def test_convolution_parameters_follow_caffe(text, num_spatial, want):
    assert conv(text, num_spatial) == want


@pytest.mark.parametrize("text,num_spatial,message", [
    ("stride: 2", 2, "kernel_size (or kernel_h and kernel_w) is required"),
    ("kernel_size: 3 kernel_size: 3", 3, "kernel_size must be given once, or once per spatial axis "
                                         "(kernel_size given 2 times; 3 spatial axes)"),
    ("kernel_h: 3 kernel_w: 3", 3, "kernel_h and kernel_w can only be used for 2-D"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", 2, "give either kernel_size or kernel_h/kernel_w, not both"),
    ("kernel_h: 3", 2, "a non-square kernel needs both kernel_h and kernel_w"),
    ("kernel_size: 0", 2, "kernel size must be positive, got [0, 0]"),
    ("kernel_size: 3 stride: 0", 2, "stride must be positive"),
    ("kernel_size: 3 stride_h: 2", 2, "stride must be positive, got [2, 0]"),      # Caffe: stride_w is 0
    ("kernel_size: 3 stride: 1 stride_h: 2 stride_w: 2", 2, "give either stride or stride_h/stride_w, not both"),
    ("kernel_size: 3 pad: 1 pad: 1 pad: 1", 2, "pad must be given once, or once per spatial axis"),
    ("kernel_size: 3 dilation: 0", 2, "dilation must be positive"),
    ("kernel_size: 3 dilation: 1 dilation: 1 dilation: 1", 2, "dilation must be given once"),
])
def test_convolution_parameter_errors_name_the_layer(text, num_spatial, message):
    with pytest.raises(ConfigError) as e:
        conv(text, num_spatial)
    assert str(e.value).startswith("layer 'w' (Test): ") and message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,want", [
    ("kernel_size: 3", ([3, 3], [1, 1], [0, 0])),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", ([3, 2], [2, 1], [1, 0])),
    ("kernel_size: 3 stride: 2 pad: 1", ([3, 3], [2, 2], [1, 1])),
    ("kernel_size: 3 kernel_h: 5", ([3, 3], [1, 1], [0, 0])),       # Caffe's pooling reads kernel_size here
    ("global_pooling: true", (None, [1, 1], [0, 0])),
])
def test_pooling_parameters_follow_caffe(text, want):
    assert pool(text) == want


@pytest.mark.parametrize("text,message", [
    ("stride: 2", "kernel_size (or kernel_h and kernel_w) is required"),
    ("kernel_size: 3 kernel_h: 3 kernel_w: 3", "give either kernel_size or kernel_h/kernel_w, not both"),
    ("kernel_h: 3", "a non-square kernel needs both kernel_h and kernel_w"),
    ("kernel_size: 0", "kernel size must be positive"),
    ("kernel_size: 3 pad_h: 1", "a per-axis pad needs both pad_h and pad_w"),            # unlike convolution
    ("kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", "give either pad or pad_h/pad_w, not both"),
    ("kernel_size: 3 stride_w: 2", "a per-axis stride needs both stride_h and stride_w"),
    ("kernel_size: 3 stride: 0", "stride must be positive"),
    ("global_pooling: true kernel_size: 2", "with global_pooling the kernel size cannot be given"),
    ("global_pooling: true stride: 2", "with global_pooling only pad 0 and stride 1 are allowed"),
])
def test_pooling_parameter_errors_name_the_layer(text, message):
    with pytest.raises(ConfigError) as e:
        pool(text)
    assert str(e.value).startswith("layer 'w' (Test): ") and message in str(e.value)


@pytest.mark.parametrize("text", [
    'type: "Convolution" convolution_param { num_output: 2 kernel_h: 3 }',
    'type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 0 }',
    'type: "Im2col" convolution_param { kernel_size: 3 kernel_h: 3 kernel_w: 3 }',
    'type: "Pooling" pooling_param { kernel_size: 2 pad_w: 1 }',
])
def test_every_window_layer_reads_its_parameters_here(text):
    with pytest.raises(ConfigError, match=r"^layer 'l' \("):
        make(text, (1, 2, 6, 6))


def test_output_sizes():
    assert c_div(-1, 2) == 0 and c_div(-3, 2) == -1 and c_div(7, 2) == 3
    # (4 - 5) / 2 truncates to 0 in C: one output; deconvolution inverts a strided convolution's size.
    assert conv_output_shape([4, 9], [5, 3], [2, 1], [0, 0], [1, 2]) == [1, 5]
    assert conv_output_shape([3, 5], [4, 4], [2, 2], [1, 1], [1, 1], reverse=True) == [6, 10]
    assert pooled_size(112, 3, 2, 0) == 56 and pooled_size(112, 3, 2, 0, ceil_mode=False) == 55
    assert pooled_size(5, 2, 2, 1) == 3                    # the 4th window would start in the padding
    assert pooled_size(5, 1, 3, 0, padded=True) == 2       # ... also on an axis without its own pad


def test_output_range_is_the_outputs_whose_input_lies_inside():
    for n_out, stride, offset, size in itertools.product(range(0, 6), range(1, 4), range(-5, 6), range(0, 6)):
        inside = [o for o in range(n_out) if 0 <= o * stride + offset < size]
        lo, hi = output_range(n_out, stride, offset, size)
        assert list(range(lo, hi)) == inside and 0 <= lo <= hi <= n_out, (n_out, stride, offset, size)
