"""caffe.coord_map: the position maps of spatial layers, their composition, and crop() checked by
running the nets it builds."""
import numpy as np
import pytest

import numcaffe.net.pycaffe as caffe
from numcaffe.net.errors import NumcaffeError
from numcaffe.net.pycaffe.coord_map import (AxisMismatchException, CoordMapError, CropError, compose, coord_map,
                                            coord_map_from_to, crop, inverse)

L, P = caffe.layers, caffe.params


def _input(*dims):
    return L.Input(shape=dict(dim=list(dims)))


def _window_centre(y, kernel, stride, pad, dilation=1):
    """Where output position y's window is centred in the input: the definition the maps encode."""
    return stride * y - pad + (kernel - 1) * dilation / 2


@pytest.mark.parametrize("kernel, stride, pad, dilation", [(3, 1, 0, 1), (3, 2, 1, 1), (5, 3, 4, 1),
                                                           (3, 1, 2, 2), (2, 2, 0, 1)])
def test_convolution_map_sends_window_centres_to_their_output_position(kernel, stride, pad, dilation):
    conv = L.Convolution(_input(1, 1, 20, 20), num_output=1, kernel_size=kernel, stride=stride, pad=pad,
                         dilation=dilation)
    ax, a, b = coord_map(conv.fn)
    assert ax == 1
    for y in range(5):
        x = _window_centre(y, kernel, stride, pad, dilation)
        np.testing.assert_allclose(a * x + b, y)


def test_deconvolution_map_is_the_inverse_of_the_matching_convolution():
    data = _input(1, 1, 20, 20)
    conv = L.Convolution(data, num_output=1, kernel_size=4, stride=2, pad=1)
    deconv = L.Deconvolution(data, num_output=1, kernel_size=4, stride=2, pad=1)
    _, a, b = compose(coord_map(deconv.fn), coord_map(conv.fn))
    np.testing.assert_allclose(a, 1)
    np.testing.assert_allclose(b, 0)


def test_pooling_uses_its_own_fields_and_global_pooling_has_no_map():
    data = _input(1, 1, 20, 20)
    ax, a, b = coord_map(L.Pooling(data, kernel_size=3, stride=2, pad=1).fn)
    assert ax == 1
    np.testing.assert_allclose(np.ravel((a, b)), [0.5, 0.0])
    with pytest.raises(CoordMapError, match="global_pooling"):
        coord_map(L.Pooling(data, global_pooling=True).fn)


def test_per_axis_fields_give_one_map_per_axis():
    # kernel_h/kernel_w and pad_h/pad_w, which pycaffe's coord_map refuses, map axis by axis
    conv = L.Convolution(_input(1, 1, 20, 20), num_output=1, kernel_h=3, kernel_w=5, pad_h=0, pad_w=2)
    ax, a, b = coord_map(conv.fn)
    np.testing.assert_allclose(a, 1)
    np.testing.assert_allclose(b, [-1, 0])
    nested = L.Convolution(_input(1, 1, 20, 20), convolution_param=dict(num_output=1, kernel_size=[3, 5],
                                                                        pad=[0, 2]))
    np.testing.assert_allclose(coord_map(nested.fn)[2], [-1, 0])


def test_compose_and_inverse():
    assert compose((None, 1, 0), (2, 3.0, 1.0)) == (2, 3.0, 1.0)
    assert compose((1, 2.0, 1.0), (None, 1, 0)) == (1, 2.0, 1.0)
    assert compose((1, 2.0, 1.0), (1, 3.0, -1.0)) == (1, 6.0, -1.0)     # 2 (3x - 1) + 1
    ax, a, b = inverse((1, 4.0, 2.0))
    assert (ax, a * (4.0 * 5 + 2.0) + b) == (1, 5.0)
    with pytest.raises(AxisMismatchException, match="axis 1 with one along axis 2"):
        compose((1, 1, 0), (2, 1, 0))


def test_elementwise_layers_map_nothing():
    data = _input(1, 3, 8, 8)
    conv = L.Convolution(data, num_output=3, kernel_size=3)
    through = L.Scale(L.BatchNorm(L.ReLU(conv)))
    assert coord_map_from_to(through, data)[1:] == coord_map_from_to(conv, data)[1:]


def test_unconnected_tops_are_a_runtime_error_naming_them():
    data = _input(1, 1, 8, 8)
    ip = L.InnerProduct(L.Convolution(data, num_output=2, kernel_size=3), num_output=4)
    with pytest.raises(RuntimeError, match="no chain of spatial layers joins <Top 0 of InnerProduct>") as info:
        coord_map_from_to(ip, data)
    assert isinstance(info.value, NumcaffeError)


def test_a_crop_is_followed_through_its_first_bottom_only():
    big, small = _input(1, 1, 30, 30), _input(1, 1, 10, 10)
    cropped = L.Crop(big, small, axis=2, offset=[4, 6])
    ax, a, b = coord_map_from_to(cropped, big)
    assert ax == 1
    np.testing.assert_allclose(b, [4, 6])                        # crop position x is x + offset in `big`
    with pytest.raises(CoordMapError):
        coord_map_from_to(cropped, small)                        # `small` only gave the size


def test_crop_aligns_a_padded_convolution_with_its_input():
    # a centred one-hot kernel copies the input; pad 4 puts it 3 positions in (conv 3x3), so the crop
    # made by crop() must cut exactly the input back out of the larger map
    n = caffe.NetSpec()
    n.data = _input(1, 1, 10, 10)
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=3, pad=4, bias_term=False,
                           weight_filler=dict(type="constant", value=0))
    n.out = crop(n.conv, n.data)
    proto = n.to_proto()
    assert proto.layer[-1].crop_param.axis == 2 and list(proto.layer[-1].crop_param.offset) == [3]
    net = caffe.Net(proto, caffe.TEST)
    net.params["conv"][0].data[0, 0, 1, 1] = 1.0
    x = np.random.default_rng(2).normal(size=(1, 1, 10, 10)).astype(np.float32)
    out = net.forward(data=x)["out"]
    assert net.blobs["conv"].data.shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(out, x)


def test_fcn_upsampling_crop_has_the_right_size_and_offset():
    # FCN-32s in small: pad 50, two 2x poolings, 4x upsampling back
    n = caffe.NetSpec()
    n.data = _input(1, 3, 37, 41)
    n.conv = L.Convolution(n.data, num_output=4, kernel_size=3, pad=50)
    n.pool1 = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.pool2 = L.Pooling(n.pool1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool2, num_output=4, kernel_size=8, stride=4, bias_term=False)
    n.score = crop(n.up, n.data)
    # data -> conv: x + 49 (pad 50, centre 1); each pool: x / 2 - 1/4; deconv: 4 x + 3.5
    # => up = ((x + 49) / 2 - 1/4) / 2 - 1/4) * 4 + 3.5 = x + 51
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert ax == 1
    np.testing.assert_allclose(np.ravel((a, b)), [1, -51])
    offset = 51
    net = caffe.Net(n.to_proto(), caffe.TEST)
    assert net.blobs["score"].data.shape == (1, 4, 37, 41)
    assert list(n.to_proto().layer[-1].crop_param.offset) == [offset]
    assert net.blobs["up"].data.shape[2] >= 37 + offset


def test_crop_refuses_what_is_not_a_crop():
    data = _input(1, 1, 20, 20)
    pooled = L.Pooling(data, kernel_size=3, stride=3)
    up2 = L.Deconvolution(pooled, num_output=1, kernel_size=4, stride=2)
    with pytest.raises(AssertionError, match="scale"):
        crop(up2, data)                                            # 3x down, 2x up
    shrunk = L.Convolution(data, num_output=1, kernel_size=5)      # 16 x 16: smaller than data
    with pytest.raises(CropError, match="negative crop offset"):
        crop(shrunk, data)
    half = L.Convolution(data, num_output=1, kernel_size=2, pad=3)  # centres fall between pixels
    with pytest.raises(CropError, match="not a whole number") as info:
        crop(half, data)
    assert isinstance(info.value, NumcaffeError)
