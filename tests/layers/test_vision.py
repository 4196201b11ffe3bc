"""Shapes, edge rules and errors of the vision layers (Convolution, Deconvolution, Im2col, Pooling, SPP, LRN, Crop)."""
import numpy as np
import pytest
from google.protobuf import text_format

from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError, NumcaffeError, ShapeError
from numcaffe.net.proto import caffe_pb2
from tests.layers.cases_vision import caffe_pooled, conv_ref


def make(text, *shapes, values=None, phase=caffe_pb2.TRAIN, num_top=1):
    p = caffe_pb2.LayerParameter(name="l", phase=phase)
    text_format.Parse(text, p)
    layer = create_layer(p)
    bottom = [Blob(s) for s in shapes]
    rs = np.random.RandomState(0)
    for i, b in enumerate(bottom):
        b.data[...] = rs.standard_normal(b.shape) if values is None else values[i]
    top = [Blob() for _ in range(num_top)]
    layer.SetUp(bottom, top)
    return layer, bottom, top


def out_shape(text, *shapes):
    return make(text, *shapes)[2][0].shape


# -- Caffe's output-size formulas -------------------------------------------------

def test_alexnet_shapes():
    conv1 = 'type: "Convolution" convolution_param { num_output: 96 kernel_size: 11 stride: 4 }'
    assert out_shape(conv1, (1, 3, 227, 227)) == (1, 96, 55, 55)
    pool = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
    assert out_shape(pool, (1, 96, 55, 55)) == (1, 96, 27, 27)
    assert out_shape(pool, (1, 256, 27, 27)) == (1, 256, 13, 13)
    assert out_shape(pool, (1, 256, 13, 13)) == (1, 256, 6, 6)
    conv2 = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 5 pad: 2 group: 2 }'
    assert out_shape(conv2, (1, 96, 27, 27)) == (1, 4, 27, 27)


def test_pooling_rounds_up_unlike_convolution():
    # GoogLeNet's pool1: 112 -> 56 with Caffe's ceil (floor would give 55).
    assert out_shape('type: "Pooling" pooling_param { kernel_size: 3 stride: 2 }', (1, 1, 112, 112)) == (1, 1, 56, 56)
    assert out_shape('type: "Pooling" pooling_param { kernel_size: 3 stride: 2 round_mode: FLOOR }',
                     (1, 1, 112, 112)) == (1, 1, 55, 55)
    assert out_shape('type: "Convolution" convolution_param { num_output: 1 kernel_size: 3 stride: 2 }',
                     (1, 1, 112, 112)) == (1, 1, 55, 55)


def test_pooling_last_window_must_start_inside_the_padded_image():
    # ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start at 6 - 1 = 5, in the padding: 3.
    assert caffe_pooled(5, 2, 2, 1) == 3
    assert out_shape('type: "Pooling" pooling_param { kernel_size: 2 stride: 2 pad: 1 }', (1, 1, 5, 5)) == (1, 1, 3, 3)
    # Without padding the rule does not apply: ceil((5 - 2) / 2) + 1 = 3.
    assert out_shape('type: "Pooling" pooling_param { kernel_size: 2 stride: 2 }', (1, 1, 5, 5)) == (1, 1, 3, 3)


def test_pooling_clips_the_last_window_on_both_axes_when_either_is_padded():
    # Caffe applies the "last window starts inside" rule to both axes as soon as pad_h or pad_w
    # is non-zero (pooling_layer.cpp Reshape: if (pad_h_ || pad_w_)).  Width here has no padding:
    # ceil((5 - 1) / 3) + 1 = 3, and the 3rd window would start at 6 >= 5 + 0, so Caffe drops it.
    text = 'type: "Pooling" pooling_param { kernel_h: 2 kernel_w: 1 stride: 3 pad_h: 1 pad_w: 0 }'
    assert out_shape(text, (1, 1, 5, 5)) == (1, 1, 2, 2)
    # Without any padding the rule does not apply (the empty last window stays, as in Caffe).
    assert out_shape('type: "Pooling" pooling_param { kernel_h: 2 kernel_w: 1 stride: 3 }',
                     (1, 1, 5, 5)) == (1, 1, 2, 3)


def test_convolution_output_size_truncates_like_c():
    # (4 - 5) / 2 is 0 in C, so Caffe gives one output whose window runs past the image (zeros).
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 1 kernel_size: 5 stride: 2 '
                              'weight_filler { type: "constant" value: 1 } }', (1, 1, 4, 4))
    assert top[0].shape == (1, 1, 1, 1)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data.ravel(), [bottom[0].data.sum()], rtol=1e-5)
    with pytest.raises(ShapeError):
        make('type: "Convolution" convolution_param { num_output: 1 kernel_size: 5 }', (1, 1, 3, 3))


def test_deconvolution_and_dilation_shapes():
    assert out_shape('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }',
                     (1, 3, 3, 5)) == (1, 2, 6, 10)
    assert out_shape('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 dilation: 2 }',
                     (1, 1, 9, 9)) == (1, 2, 5, 5)
    assert out_shape('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 dilation: 1 dilation: 3 }',
                     (1, 1, 9, 9)) == (1, 2, 7, 3)


def test_weight_shapes_follow_caffe():
    conv, _, _ = make('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 group: 2 }',
                      (1, 4, 5, 5))
    assert conv.blobs[0].shape == (6, 2, 3, 2) and conv.blobs[1].shape == (6,)
    deconv, _, _ = make('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 3 group: 2 '
                        'bias_term: false }', (1, 4, 5, 5))
    assert [b.shape for b in deconv.blobs] == [(4, 3, 3, 3)]
    conv3d, _, _ = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_size: 1 '
                        'kernel_size: 2 }', (1, 3, 4, 4, 4))
    assert conv3d.blobs[0].shape == (2, 3, 3, 1, 2)


def test_im2col_shape_and_channel_order():
    layer, bottom, top = make('type: "Im2col" convolution_param { kernel_size: 2 }', (1, 2, 3, 3))
    assert top[0].shape == (1, 8, 2, 2)
    layer.Forward(bottom, top)
    x = bottom[0].data
    # channel c * 4 + i * 2 + j holds x[c, oh + i, ow + j]
    np.testing.assert_array_equal(top[0].data[0, 5], x[0, 1, 0:2, 1:3])


def test_preloaded_weights_are_used_and_checked():
    p = caffe_pb2.LayerParameter(name="c", type="Convolution")
    text_format.Parse('convolution_param { num_output: 2 kernel_size: 1 }', p)
    w, b = p.blobs.add(), p.blobs.add()
    w.shape.dim.extend([2, 3, 1, 1])
    w.data.extend([1, 2, 3, 4, 5, 6])
    b.shape.dim.extend([2])
    b.data.extend([0.5, -0.5])
    layer = create_layer(p)
    bottom, top = [Blob((1, 3, 2, 2))], [Blob()]
    bottom[0].data[...] = 1.0
    layer.SetUp(bottom, top)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0, :, 0, 0], [6.5, 14.5])
    bad = caffe_pb2.LayerParameter()
    bad.CopyFrom(p)
    bad.convolution_param.num_output = 3
    with pytest.raises(ConfigError, match="weight shape"):
        create_layer(bad).SetUp([Blob((1, 3, 2, 2))], [Blob()])


@pytest.mark.parametrize("stride,pad,dilation", [(2, 1, 1), (1, 1, 1), (1, 2, 2), (1, 0, 1)])
def test_depthwise_paths_match_the_oracle_at_a_larger_size(stride, pad, dilation):
    fill = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
    layer, bottom, top = make(f'type: "Convolution" convolution_param {{ num_output: 16 kernel_size: 3 pad: {pad} '
                              f'stride: {stride} dilation: {dilation} group: 8 {fill} }}', (3, 8, 11, 9))
    assert layer.layout == "depthwise"
    layer.Forward(bottom, top)
    s, p, d = [stride] * 2, [pad] * 2, [dilation] * 2
    ref = conv_ref(bottom[0].data, layer.blobs[0].data, layer.blobs[1].data, s, p, d, 8)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    # Backward against the generic grouped path (the same layer made to run the batched layout).
    rs = np.random.RandomState(1)
    top[0].diff[...] = rs.standard_normal(top[0].shape)
    layer.blobs[0].diff[...] = 0
    layer.Backward(top, [True], bottom)
    dx, dw = bottom[0].diff.copy(), layer.blobs[0].diff.copy()
    from numcaffe.layers.im2col import Im2colGeometry
    layer.geo = Im2colGeometry(8, [11, 9], list(top[0].shape[2:]), [3, 3], s, p, d)
    layer.layout, layer.chunk, layer._cached = "rows", 3, False
    layer.blobs[0].diff[...] = 0
    layer.Backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=1e-4, atol=1e-3)


GEOMETRIES_2D = [  # (H, W), kernel, stride, pad, dilation
    ((7, 6), [3, 3], [1, 1], [0, 0], [1, 1]),
    ((7, 6), [3, 2], [1, 1], [1, 2], [1, 1]),      # padding wider than some windows' overlap
    ((9, 8), [3, 3], [2, 3], [1, 0], [1, 1]),      # strided
    ((9, 8), [2, 3], [1, 2], [2, 1], [2, 3]),      # dilated, padded, strided
    ((4, 4), [5, 5], [2, 2], [0, 0], [1, 1]),      # window runs past the image (C's truncation)
    ((5, 6), [1, 1], [1, 1], [0, 0], [1, 1]),
]


def _out_size(n, k, s, p, d):
    return (n + 2 * p - (d * (k - 1) + 1)) // s + 1


@pytest.mark.parametrize("ishape,kernel,stride,pad,dilation", GEOMETRIES_2D)
def test_2d_im2col_and_col2im_match_the_table_kernels(ishape, kernel, stride, pad, dilation):
    from numcaffe.layers.im2col import Im2colGeometry
    oshape = [max(1, _out_size(*a)) for a in zip(ishape, kernel, stride, pad, dilation)]
    N, C = 3, 2
    two_d = Im2colGeometry(C, list(ishape), oshape, kernel, stride, pad, dilation)
    table = Im2colGeometry(C, list(ishape), oshape, kernel, stride, pad, dilation, nd=True)
    assert two_d.two_d and not table.two_d
    K, P = two_d.rows, two_d.P
    rs = np.random.RandomState(0)
    x = rs.standard_normal(N * two_d.image_size).astype(np.float32)
    col = rs.standard_normal(K * N * P).astype(np.float32)
    for strides in ((P, K * P), (N * P, P)):  # per-image (N, K, P) and batched (K, N * P) layouts
        a, b = np.full(K * N * P, np.nan, np.float32), np.full(K * N * P, np.nan, np.float32)
        two_d.im2col(x, N, a, *strides)
        table.im2col(x, N, b, *strides)
        np.testing.assert_array_equal(a, b)
        da, db = np.full_like(x, np.nan), np.full_like(x, np.nan)
        two_d.col2im(col, *strides, N, da)
        table.col2im(col, *strides, N, db)
        np.testing.assert_allclose(da, db, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ishape,kernel,stride,pad,dilation", GEOMETRIES_2D)
def test_nhwc_columns_are_the_row_columns_reordered(ishape, kernel, stride, pad, dilation):
    from numcaffe.layers.im2col import Im2colGeometry, col2im_nhwc, from_cols, im2col_nhwc, to_cols
    oshape = [max(1, _out_size(*a)) for a in zip(ishape, kernel, stride, pad, dilation)]
    N, C = 3, 2
    geo = Im2colGeometry(C, list(ishape), oshape, kernel, stride, pad, dilation)
    K, P, S = geo.rows, geo.P, geo.isize
    rs = np.random.RandomState(1)
    x = rs.standard_normal(N * geo.image_size).astype(np.float32)
    rows = np.empty(K * N * P, np.float32)
    geo.im2col(x, N, rows, N * P, P)
    xh, db = np.empty_like(x), np.zeros(C, np.float32)
    to_cols(x, N, C, S, xh, db, True)
    np.testing.assert_array_equal(xh.reshape(N, S, C), x.reshape(N, C, S).transpose(0, 2, 1))
    np.testing.assert_allclose(db, x.reshape(N, C, S).sum(axis=(0, 2)), rtol=1e-5)
    col = np.full(K * N * P, np.nan, np.float32)
    im2col_nhwc(xh, N, C, *geo.args_2d, col)
    KK = K // C
    np.testing.assert_array_equal(col.reshape(N * P, KK, C), rows.reshape(C, KK, N * P).transpose(2, 1, 0))
    # col2im: the NHWC scatter, back in NCHW, equals the row layout's col2im of the same numbers.
    g = rs.standard_normal(K * N * P).astype(np.float32)
    dxh, dx = np.full_like(x, np.nan), np.empty_like(x)
    col2im_nhwc(g, N, C, *geo.args_2d, dxh)
    from_cols(dxh, N, C, S, np.zeros(C, np.float32), False, dx)
    ref = np.empty_like(x)
    geo.col2im(np.ascontiguousarray(g.reshape(N * P, KK, C).transpose(2, 1, 0)).ravel(), N * P, P, N, ref)
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params", ["kernel_size: 5", "kernel_size: 3 pad: 1 stride: 2",
                                    "kernel_h: 3 kernel_w: 2 pad: 1 dilation: 2"])
def test_nhwc_path_matches_the_oracle_and_the_row_path(params):
    fill = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
    layer, bottom, top = make(f'type: "Convolution" convolution_param {{ num_output: 6 {params} {fill} }}',
                              (4, 3, 12, 11))
    assert layer.layout == "nhwc"
    layer.Forward(bottom, top)
    p = layer
    ref = conv_ref(bottom[0].data, layer.blobs[0].data, layer.blobs[1].data, p.stride, p.pad, p.dilation, 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
    rs = np.random.RandomState(2)
    top[0].diff[...] = rs.standard_normal(top[0].shape)
    results = []
    for layout in ("nhwc", "rows"):  # the same layer made to run the (K, N * P) columns
        layer.layout = layout
        layer.Forward(bottom, top)
        layer.blobs[0].diff[...] = 0
        layer.blobs[1].diff[...] = 0
        layer.Backward(top, [True], bottom)
        results.append([bottom[0].diff.copy(), layer.blobs[0].diff.copy(), layer.blobs[1].diff.copy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("params", ["kernel_size: 1 stride: 2", "kernel_size: 1"])
def test_small_1x1_convolutions_skip_the_nhwc_layout_and_match_the_oracle(params):
    fill = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
    layer, bottom, top = make(f'type: "Convolution" convolution_param {{ num_output: 6 {params} {fill} }}',
                              (4, 3, 12, 11))
    assert layer.layout == "rows"                 # what a 3x3 of this size runs is "nhwc"
    layer.Forward(bottom, top)
    p = layer
    ref = conv_ref(bottom[0].data, layer.blobs[0].data, layer.blobs[1].data, p.stride, p.pad, p.dilation, 1)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(3, 2, 4, 4), (3, 2, 16, 16)])  # one GEMM per chunk; per image
def test_chunked_batches_give_the_same_result(monkeypatch, shape):
    from numcaffe.layers import conv
    from numcaffe.net.random import set_random_seed
    text = ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 '
            'weight_filler { type: "gaussian" std: 1 } }')
    results = []
    for limit in (conv.COL_LIMIT, 40):  # 40 elements: one image per chunk
        monkeypatch.setattr(conv, "COL_LIMIT", limit)
        set_random_seed(5)
        layer, bottom, top = make(text, shape)
        layer.Forward(bottom, top)
        top[0].diff[...] = 1.0
        layer.Backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [1, 2])
def test_big_weight_layout_gives_the_same_results(monkeypatch, group):
    """SMALL_WEIGHTS picks the layout and the weight-gradient GEMM; both choices give one answer
    (and the weight gradient still adds to what the diff held)."""
    from numcaffe.layers import conv
    from numcaffe.net.random import set_random_seed
    text = (f'type: "Convolution" convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 group: {group} '
            'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }')
    results = []
    for limit in (conv.SMALL_WEIGHTS, 0):  # 0: every weight counts as big
        monkeypatch.setattr(conv, "SMALL_WEIGHTS", limit)
        set_random_seed(5)
        layer, bottom, top = make(text, (3, 4, 5, 5))  # 25 positions: the batched layouts
        assert layer.layout == ("nhwc" if limit > 0 and group == 1 else "rows")
        layer.Forward(bottom, top)
        rs = np.random.RandomState(7)
        top[0].diff[...] = rs.standard_normal(top[0].shape)
        layer.blobs[0].diff[...] = 0.5
        layer.Backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy(),
                        layer.blobs[1].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# -- Pooling semantics -----------------------------------------------------------

def test_max_pooling_ties_go_to_the_first_maximum():
    x = np.ones((1, 1, 2, 4), np.float32)
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                              (1, 1, 2, 4), values=[x], num_top=2)
    layer.Forward(bottom, top)
    np.testing.assert_array_equal(top[1].data.ravel(), [0, 2])   # flat indices h * W + w
    top[0].diff[...] = [[[[3.0, 5.0]]]]
    layer.Backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[[[3, 0, 5, 0], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (2, 3, 5, 6)])   # the 2x2 fast path, and the general one
def test_max_pooling_follows_caffes_loop_on_ties_infinities_and_nan(shape):
    rs = np.random.RandomState(5)
    x = rs.randint(0, 3, shape).astype(np.float32)
    x[0, 0, :2, :2] = -np.inf                      # no element beats -FLT_MAX: Caffe leaves mask -1
    x[0, 1, 0, 0], x[1, 2, 1, 3] = np.nan, np.nan  # NaN never compares greater: skipped
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                              shape, values=[x], num_top=2)
    layer.Forward(bottom, top)
    N, C, H, W = shape
    for n in range(N):
        for c in range(C):
            for oh in range(top[0].shape[2]):
                for ow in range(top[0].shape[3]):
                    best, arg = np.float32(-np.finfo(np.float32).max), -1
                    for h in range(2 * oh, min(2 * oh + 2, H)):
                        for w in range(2 * ow, min(2 * ow + 2, W)):
                            if x[n, c, h, w] > best:
                                best, arg = x[n, c, h, w], h * W + w
                    assert top[0].data[n, c, oh, ow] == best and top[1].data[n, c, oh, ow] == arg


def test_average_pooling_divides_by_the_window_clipped_to_the_padded_image():
    x = np.ones((1, 1, 3, 3), np.float32)
    layer, bottom, top = make('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }',
                              (1, 1, 3, 3), values=[x])
    layer.Forward(bottom, top)
    # Every window spans 2x2 of the padded image; the corner one holds one pixel, the last one four.
    np.testing.assert_allclose(top[0].data[0, 0], [[0.25, 0.5], [0.5, 1.0]])


def test_stochastic_pooling_samples_in_train_and_averages_in_test():
    x = np.random.RandomState(3).uniform(0.1, 1.0, (2, 3, 4, 4)).astype(np.float32)
    text = 'type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }'
    layer, bottom, top = make(text, x.shape, values=[x])
    layer.Forward(bottom, top)
    windows = x.reshape(2, 3, 2, 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 2, 4)
    assert np.all(np.any(windows == top[0].data[..., None], axis=-1))
    layer, bottom, top = make(text, x.shape, values=[x], phase=caffe_pb2.TEST)
    layer.Forward(bottom, top)
    np.testing.assert_allclose(top[0].data, (windows ** 2).sum(-1) / windows.sum(-1), rtol=1e-5)


def test_spp_output_size():
    assert out_shape('type: "SPP" spp_param { pyramid_height: 3 }', (2, 5, 13, 9)) == (2, 5 * (1 + 4 + 16))
    with pytest.raises(NumcaffeError):
        make('type: "SPP" spp_param { pyramid_height: 3 }', (1, 1, 2, 2))  # pad would reach the kernel size


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("text,shape", [
    ('type: "Convolution" convolution_param { num_output: 2 kernel_h: 3 }', (1, 1, 5, 5)),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3 }', (1, 1, 5, 5)),
    ('type: "Convolution" convolution_param { num_output: 2 }', (1, 1, 5, 5)),
    ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 group: 2 }', (1, 4, 5, 5)),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3 }',
     (1, 1, 5, 5)),
    ('type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 stride_h: 2 stride_w: 2 }',
     (1, 1, 5, 5, 5)),
    ('type: "Pooling" pooling_param { kernel_size: 2 pad: 2 }', (1, 1, 5, 5)),
    ('type: "Pooling" pooling_param { global_pooling: true kernel_size: 2 }', (1, 1, 5, 5)),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }', (1, 1, 5, 5)),
    ('type: "LRN" lrn_param { local_size: 4 }', (1, 4, 5, 5)),
])
def test_bad_parameters_are_config_errors(text, shape):
    with pytest.raises(ConfigError):
        make(text, shape)


def test_shape_errors_name_the_layer():
    with pytest.raises(ShapeError, match="layer 'l'"):
        make('type: "Pooling" pooling_param { kernel_size: 2 }', (1, 1, 5))
    with pytest.raises(ShapeError, match="out of bounds"):
        make('type: "Crop" crop_param { offset: 2 }', (1, 1, 5, 5), (1, 1, 4, 4))
    layer, bottom, top = make('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }', (1, 3, 2, 2))
    bottom[0].reshape((1, 4, 2, 2))
    with pytest.raises(ShapeError, match="channels"):
        layer.Reshape(bottom, top)


def test_crop_gives_no_gradient_to_the_reference_blob():
    layer, bottom, top = make('type: "Crop" crop_param { axis: 2 offset: 1 }', (1, 2, 4, 4), (1, 2, 2, 2))
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    layer.Forward(bottom, top)
    bottom[1].diff[...] = 7.0
    top[0].diff[...] = 1.0
    layer.Backward(top, [True, False], bottom)
    assert bottom[0].diff.sum() == 8 and bottom[0].diff[0, 0, 1, 1] == 1
    np.testing.assert_array_equal(bottom[1].diff, 7.0)


# -- one scratch workspace shared by all convolution layers of a thread ---------------

SHARED_PATHS = {  # input shape, convolution_param: each of the three column layouts
    "per_image": ((2, 3, 20, 20), "num_output: 4 kernel_size: 3"),                  # P = 324 >= 256
    "nhwc": ((3, 3, 8, 8), "num_output: 5 kernel_size: 3"),                          # few positions, 1 group
    "rows": ((3, 4, 8, 8), "num_output: 6 kernel_size: 3 group: 2"),                 # few positions, groups
}


@pytest.mark.parametrize("path", SHARED_PATHS)
def test_conv_backward_after_another_conv_used_the_workspace_is_right(path):
    shape, param = SHARED_PATHS[path]
    text = f'type: "Convolution" convolution_param {{ {param} weight_filler {{ type: "gaussian" std: 1 }} }}'

    def backward(layer, bottom, top):
        top[0].diff[...] = np.random.RandomState(2).standard_normal(top[0].shape)
        layer.blobs[0].diff[...] = 0
        layer.Backward(top, [True], bottom)
        return layer.blobs[0].diff.copy(), bottom[0].diff.copy()

    a, a_bottom, a_top = make(text, shape)
    assert a.layout == path
    a.Forward(a_bottom, a_top)
    alone = backward(a, a_bottom, a_top)
    # Now another layer (other input, same geometry) runs between a's forward and backward.
    b, b_bottom, b_top = make(text, shape)
    b_bottom[0].data[...] *= -3.0
    a.Forward(a_bottom, a_top)
    b.Forward(b_bottom, b_top)
    assert np.shares_memory(a.buffers.get("col", 1), b.buffers.get("col", 1))
    backward(b, b_bottom, b_top)
    interleaved = backward(a, a_bottom, a_top)
    for got, want in zip(interleaved, alone):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_workspace_is_freed_with_the_last_convolution_layer():
    """In a new thread (a workspace of its own): the arrays live while a layer made there does."""
    import gc
    import threading

    from numcaffe.layers import workspace
    seen = {}

    def body():
        ws = workspace.thread_workspace()
        text = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }'
        a, a_bottom, a_top = make(text, (2, 3, 8, 8))
        b, b_bottom, b_top = make(text, (2, 3, 8, 8))
        a.Forward(a_bottom, a_top)
        seen["two"] = (ws.users, bool(ws.arrays))
        del a
        gc.collect()
        seen["one"] = (ws.users, bool(ws.arrays))
        del b
        gc.collect()
        seen["none"] = (ws.users, bool(ws.arrays), bool(ws.owners))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == {"two": (2, True), "one": (1, True), "none": (0, False, False)}


def test_lrn_square_root_kernels_equal_the_pow_ones_at_beta_075():
    from numcaffe.layers.lrn import lrn_input_grad, lrn_input_grad_beta75, lrn_output, lrn_output_beta75
    r = np.random.RandomState(8)
    x = r.standard_normal(999).astype(np.float32)
    scale = (1.0 + r.uniform(0, 50, x.size)).astype(np.float32)
    dy, accum = r.standard_normal(x.size).astype(np.float32), r.standard_normal(x.size).astype(np.float32)
    outs = [np.empty_like(x) for _ in range(4)]
    lrn_output(x, scale, 0.75, outs[0])
    lrn_output_beta75(x, scale, outs[1])
    lrn_input_grad(dy, x, scale, accum, 0.75, 3e-4, outs[2])
    lrn_input_grad_beta75(dy, x, scale, accum, 3e-4, outs[3])
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=0)
    np.testing.assert_allclose(outs[3], outs[2], rtol=1e-6, atol=1e-7)
