"""layers/depthwise.py kernels against a plain numpy reference: forward, dx and dw, over strides,
padding, dilation, rectangular kernels and channel multipliers."""
import numpy as np
import pytest

from numcaffe.layers import depthwise as D


def reference(x, w, b, M, stride, pad, dil, dy):
    """Loop-over-taps depthwise convolution and its two gradients, in float64."""
    N, C, H, W = x.shape
    kh, kw = w.shape[1:]
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dil
    Ho = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    Wo = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    src = np.arange(M) // (M // C)
    y = np.broadcast_to(b[None, :, None, None], (N, M, Ho, Wo)).astype(np.float64)
    dxp, dW = np.zeros_like(xp), np.zeros((M, kh, kw))
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)
            patch = xp[:, src, rows, cols]
            y = y + w[None, :, i, j, None, None] * patch
            dW[:, i, j] = (dy * patch).sum(axis=(0, 2, 3))
            np.add.at(dxp, (slice(None), src, rows, cols), w[None, :, i, j, None, None] * dy)
    return y, dxp[:, :, ph:ph + H, pw:pw + W], dW


CASES = [  # N, C, M, (H, W), (kh, kw), stride, pad, dilation
    (2, 3, 3, (7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),       # MobileNet's stride 1
    (2, 3, 3, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1)),       # MobileNet's stride 2, even size
    (1, 4, 4, (9, 7), (3, 3), (2, 2), (0, 0), (1, 1)),       # no padding, odd size
    (2, 2, 6, (8, 9), (3, 2), (1, 2), (2, 1), (2, 1)),       # multiplier 3, dilation, mixed strides
    (1, 2, 4, (11, 9), (5, 5), (3, 2), (2, 2), (1, 2)),      # stride 3, large kernel
    (3, 2, 2, (1, 1), (3, 3), (1, 1), (1, 1), (1, 1)),       # 1x1 image: one tap in range
    (1, 3, 3, (70, 66), (3, 3), (1, 1), (1, 1), (1, 1)),     # longer than one CHUNK line
]


# Every case through the general kernels; the stride-1 cases through the _s1 kernels as well.
KERNEL_CASES = [case + (False,) for case in CASES] + [case + (True,) for case in CASES if case[5] == (1, 1)]


@pytest.mark.parametrize("N,C,M,size,kernel,stride,pad,dil,s1", KERNEL_CASES)
def test_depthwise_kernels_match_the_reference(N, C, M, size, kernel, stride, pad, dil, s1):
    rs = np.random.RandomState(sum(size) + M)
    H, W = size
    x = rs.standard_normal((N, C, H, W)).astype(np.float32)
    w = rs.standard_normal((M,) + kernel).astype(np.float32)
    b = rs.standard_normal(M).astype(np.float32)
    Ho = (H + 2 * pad[0] - (dil[0] * (kernel[0] - 1) + 1)) // stride[0] + 1
    Wo = (W + 2 * pad[1] - (dil[1] * (kernel[1] - 1) + 1)) // stride[1] + 1
    dy = rs.standard_normal((N, M, Ho, Wo)).astype(np.float32)
    y_ref, dx_ref, dw_ref = reference(x, w, b, M, stride, pad, dil, dy)

    y = np.full(N * M * Ho * Wo, np.nan, np.float32)
    dx = np.full(x.size, np.nan, np.float32)               # overwritten
    dW = np.ones(w.size, np.float32)                       # accumulated into
    geo = (H, W, w.ravel(), M, *kernel)
    if s1:
        D.depthwise_forward_s1(x.ravel(), N, C, *geo, *pad, *dil, Ho, Wo, b, True, y)
        D.depthwise_backward_s1(x.ravel(), dy.ravel(), N, C, *geo, *pad, *dil, Ho, Wo, dW, True, dx, True)
    else:
        D.depthwise_forward(x.ravel(), N, C, *geo, *stride, *pad, *dil, Ho, Wo, b, True, y)
        D.depthwise_backward(x.ravel(), dy.ravel(), N, C, *geo, *stride, *pad, *dil, Ho, Wo, dW, True, dx, True)
    np.testing.assert_allclose(y.reshape(y_ref.shape), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.reshape(x.shape), dx_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dW.reshape(w.shape), dw_ref + 1, rtol=1e-4, atol=1e-4)


def test_no_bias_and_gradients_one_at_a_time():
    rs = np.random.RandomState(0)
    N, C, H, W = 2, 3, 6, 5
    x = rs.standard_normal((N, C, H, W)).astype(np.float32)
    w = rs.standard_normal((C, 3, 3)).astype(np.float32)
    dy = rs.standard_normal((N, C, 3, 3)).astype(np.float32)
    y_ref, dx_ref, dw_ref = reference(x, w, np.zeros(C), C, (2, 2), (1, 1), (1, 1), dy)
    y = np.empty(dy.size, np.float32)
    D.depthwise_forward(x.ravel(), N, C, H, W, w.ravel(), C, 3, 3, 2, 2, 1, 1, 1, 1, 3, 3,
                        np.zeros(1, np.float32), False, y)
    np.testing.assert_allclose(y.reshape(y_ref.shape), y_ref, rtol=1e-5, atol=1e-5)
    dx, dW = np.full(x.size, 7, np.float32), np.zeros(w.size, np.float32)
    D.depthwise_backward(x.ravel(), dy.ravel(), N, C, H, W, w.ravel(), C, 3, 3, 2, 2, 1, 1, 1, 1, 3, 3,
                         dW, False, dx, True)
    np.testing.assert_allclose(dx.reshape(x.shape), dx_ref, rtol=1e-5, atol=1e-5)
    assert not dW.any()
    dx[:] = 7
    D.depthwise_backward(x.ravel(), dy.ravel(), N, C, H, W, w.ravel(), C, 3, 3, 2, 2, 1, 1, 1, 1, 3, 3,
                         dW, True, dx, False)
    np.testing.assert_allclose(dW.reshape(w.shape), dw_ref, rtol=1e-5, atol=1e-5)
    assert (dx == 7).all()


def test_the_layer_runs_on_these_kernels(monkeypatch):
    """conv.py's Convolution layer gives the reference results when its depthwise names point here."""
    from numcaffe.layers import conv
    from tests.layers.cases_vision import conv_ref
    from tests.layers.test_vision import make
    for name in ("depthwise_forward", "depthwise_backward", "depthwise_forward_s1", "depthwise_backward_s1"):
        monkeypatch.setattr(conv, name, getattr(D, name))
    fill = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'
    for stride in (1, 2):
        layer, bottom, top = make(f'type: "Convolution" convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 '
                                  f'stride: {stride} group: 4 {fill} }}', (2, 4, 7, 8))
        assert layer.layout == "depthwise"
        layer.Forward(bottom, top)
        ref = conv_ref(bottom[0].data, layer.blobs[0].data, layer.blobs[1].data, [stride] * 2, [1, 1], [1, 1], 4)
        np.testing.assert_allclose(top[0].data, ref, rtol=1e-4, atol=1e-4)
