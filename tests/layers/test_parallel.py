"""Every parallel twin (layers/parallel.py) gives bitwise the plain kernel's numbers, and the layers take
the twins when the thread budget and the work say so."""
import numpy as np
import pytest

from numcaffe.layers import elementwise, im2col, neuron, normalization, pooling
from numcaffe.layers.geometry import pooled_size
from numcaffe.layers.parallel import _twins, parts, pick, share
from numcaffe.net import threads
from numcaffe.solvers import sgd

rng = np.random.default_rng(7)


def rand(*shape):
    return rng.standard_normal(shape, dtype=np.float32).ravel()


def same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), np.abs(a.astype(float) - b).max()


#: (N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw): padding, strides, dilation, odd sizes
GEOMETRIES = [(2, 3, 9, 7, 3, 3, 1, 1, 1, 1, 1, 1), (3, 2, 11, 10, 5, 3, 2, 3, 2, 1, 1, 1),
              (1, 5, 8, 8, 3, 3, 1, 1, 2, 2, 2, 2), (2, 4, 6, 6, 1, 1, 2, 2, 0, 0, 1, 1)]


def out_size(i, k, s, p, d):
    return (i + 2 * p - (d * (k - 1) + 1)) // s + 1


@pytest.mark.parametrize("g", GEOMETRIES)
def test_im2col_col2im_twins_are_bitwise_the_plain_kernels(g):
    N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw = g
    Ho, Wo = out_size(H, kh, sh, ph, dh), out_size(W, kw, sw, pw, dw)
    args = (H, W, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)
    img = rand(N, C, H, W)
    K, P = C * kh * kw, Ho * Wo
    for rs, ns in ((N * P, P), (P, K * P)):            # batched (K, N*P) and per-image (N, K, P)
        a, b = np.full(K * N * P, 9, np.float32), np.full(K * N * P, 7, np.float32)
        im2col.im2col_2d(img, N, C, *args, a, rs, ns)
        im2col.im2col_2d_parallel(img, N, C, *args, b, rs, ns)
        same(a, b)
        x1, x2 = np.full(img.size, 9, np.float32), np.full(img.size, 7, np.float32)
        col = rand(K * N * P)
        im2col.col2im_2d(col, rs, ns, N, C, *args, x1)
        im2col.col2im_2d_parallel(col, rs, ns, N, C, *args, x2)
        same(x1, x2)
    # NHWC columns
    xh = rand(N, H, W, C)
    a, b = np.full(N * P * K, 9, np.float32), np.full(N * P * K, 7, np.float32)
    im2col.im2col_nhwc(xh, N, C, *args, a)
    im2col.im2col_nhwc_parallel(xh, N, C, *args, b)
    same(a, b)
    x1, x2 = np.full(xh.size, 9, np.float32), np.full(xh.size, 7, np.float32)
    col = rand(N * P * K)
    im2col.col2im_nhwc(col, N, C, *args, x1)
    im2col.col2im_nhwc_parallel(col, N, C, *args, x2)
    same(x1, x2)


@pytest.mark.parametrize("N,R,Q", [(3, 5, 7), (1, 4, 33), (4, 1, 9)])
def test_layout_and_bias_twins_are_bitwise_the_plain_kernels(N, R, Q):
    src, bias = rand(N, R, Q), rand(R)
    for with_bias in (False, True):
        d1, d2 = np.zeros(src.size, np.float32), np.ones(src.size, np.float32)
        g1, g2 = rand(R), None
        g2 = g1.copy()
        im2col.to_rows(src, N, R, Q, d1, g1, with_bias)
        im2col.to_rows_parallel(src, N, R, Q, d2, g2, with_bias)
        same(d1, d2)
        same(g1, g2)
        im2col.to_cols(src, N, R, Q, d1, g1, with_bias)
        im2col.to_cols_parallel(src, N, R, Q, d2, g2, with_bias)
        same(d1, d2)
        same(g1, g2)
        im2col.from_rows(src, N, R, Q, bias, with_bias, d1)
        im2col.from_rows_parallel(src, N, R, Q, bias, with_bias, d2)
        same(d1, d2)
        im2col.from_cols(src, N, R, Q, bias, with_bias, d1)
        im2col.from_cols_parallel(src, N, R, Q, bias, with_bias, d2)
        same(d1, d2)
    y1, y2 = src.copy(), src.copy()
    im2col.add_bias(y1, N, R, Q, bias)
    im2col.add_bias_parallel(y2, N, R, Q, bias)
    same(y1, y2)
    b1, b2 = bias.copy(), bias.copy()
    im2col.bias_grad(src, N, R, Q, b1)
    im2col.bias_grad_parallel(src, N, R, Q, b2)
    same(b1, b2)


@pytest.mark.parametrize("shares", [2, 3, 7])
def test_flat_share_twins_are_bitwise_the_plain_kernels(shares):
    n = 1001
    x, y0 = rand(n), rand(n)
    x[::5] = 0.0                                                      # ReLU's ties at zero
    a, b = x.copy(), x.copy()
    m1, m2 = np.zeros(n, np.bool_), np.ones(n, np.bool_)
    neuron.relu_forward(a, m1, 0.1)
    neuron.relu_forward_parallel(b, m2, 0.1, shares)
    same(a, b)
    assert np.array_equal(m1, m2)
    a, b = y0.copy(), y0.copy()
    neuron.relu_backward(m1, a, 0.1)
    neuron.relu_backward_parallel(m1, b, 0.1, shares)
    same(a, b)
    a, b = y0.copy(), y0.copy()
    elementwise.weighted_sum2(0.3, x, -1.7, y0, a)
    elementwise.weighted_sum2_parallel(0.3, x, -1.7, y0, b, shares)
    same(a, b)
    elementwise.scale_into(0.3, x, a)
    elementwise.scale_into_parallel(0.3, x, b, shares)
    same(a, b)
    a, b = y0.copy(), y0.copy()
    elementwise.axpy(5e-4, x, a)
    elementwise.axpy_parallel(5e-4, x, b, shares)
    same(a, b)
    g1, g2, v1, v2 = x.copy(), x.copy(), y0.copy(), y0.copy()
    sgd.sgd_update(g1, v1, 0.01, 0.9)
    sgd.sgd_update_parallel(g2, v2, 0.01, 0.9, shares)
    same(g1, g2)
    same(v1, v2)
    w1, w2 = y0.copy(), y0.copy()
    sgd.subtract(w1, g1)
    sgd.subtract_parallel(w2, g1, shares)
    same(w1, w2)


@pytest.mark.parametrize("outer,dim,inner", [(3, 5, 17), (2, 3, 64), (4, 4, 5)])
def test_channel_twins_are_bitwise_the_plain_kernels(outer, dim, inner):
    x, dy, s, b = rand(outer, dim, inner), rand(outer, dim, inner), rand(dim), rand(dim)
    y1, y2 = np.zeros(x.size, np.float32), np.ones(x.size, np.float32)
    elementwise.broadcast_scale_bias(x, s, b, outer, dim, inner, y1)
    elementwise.broadcast_scale_bias_parallel(x, s, b, outer, dim, inner, y2, 2)
    same(y1, y2)
    y1, y2 = x.copy(), x.copy()
    elementwise.broadcast_scale(y1, s, outer, dim, inner)
    elementwise.broadcast_scale_parallel(y2, s, outer, dim, inner, 2)
    same(y1, y2)
    ds1, db1, ds2, db2 = np.zeros(dim), np.zeros(dim), np.ones(dim), np.ones(dim)
    elementwise.reduce_product_and_sum(dy, x, outer, dim, inner, ds1, db1)
    elementwise.reduce_product_and_sum_parallel(dy, x, outer, dim, inner, ds2, db2)
    same(ds1, ds2)
    same(db1, db2)
    # BatchNorm: (num, channels, spatial) = (outer, dim, inner)
    m1, v1, m2, v2 = (np.zeros(dim, np.float32) for _ in range(4))
    normalization.channel_mean_var(x, outer, dim, inner, m1, v1)
    normalization.channel_mean_var_parallel(x, outer, dim, inner, m2, v2)
    same(m1, m2)
    same(v1, v2)
    std = np.sqrt(v1 + np.float32(1e-5))
    for keep in (True, False):
        y1, y2, n1, n2 = x.copy(), x.copy(), np.zeros(x.size, np.float32), np.ones(x.size, np.float32)
        normalization.batch_norm_forward(y1, m1, std, outer, dim, inner, n1, keep)
        normalization.batch_norm_forward_parallel(y2, m1, std, outer, dim, inner, n2, keep, 2)
        same(y1, y2)
        if keep:
            same(n1, n2)
    d1, d2 = dy.copy(), dy.copy()
    s1, t1, s2, t2 = (np.zeros(dim, np.float32) for _ in range(4))
    normalization.batch_norm_backward(d1, n1, std, outer, dim, inner, s1, t1)
    normalization.batch_norm_backward_parallel(d2, n1, std, outer, dim, inner, s2, t2, 2)
    same(d1, d2)
    d1, d2 = dy.copy(), dy.copy()
    normalization.batch_norm_global_backward(d1, std, outer, dim, inner)
    normalization.batch_norm_global_backward_parallel(d2, std, outer, dim, inner, 2)
    same(d1, d2)


#: (planes, H, W, kh, kw, sh, sw, ph, pw): the 2x2 fast paths, overlapping windows, padding, ceil-mode edges
POOLS = [(6, 8, 8, 2, 2, 2, 2, 0, 0), (5, 9, 7, 3, 3, 2, 2, 0, 0), (4, 7, 7, 3, 3, 2, 2, 1, 1),
         (3, 6, 10, 3, 2, 1, 2, 1, 0)]


@pytest.mark.parametrize("g", POOLS)
@pytest.mark.parametrize("shares", [2, 4])
def test_pooling_twins_are_bitwise_the_plain_kernels(g, shares):
    planes, H, W, kh, kw, sh, sw, ph, pw = g
    Ho, Wo = (pooled_size(H, kh, sh, ph, True, bool(ph or pw)), pooled_size(W, kw, sw, pw, True, bool(ph or pw)))
    window = (kh, kw, sh, sw, ph, pw, Ho, Wo)
    x = rand(planes, H, W)
    x[::3] = 0.5                                                      # ties: the first maximum wins
    y1, y2 = np.zeros(planes * Ho * Wo, np.float32), np.ones(planes * Ho * Wo, np.float32)
    k1, k2 = np.zeros(y1.size, np.int32), np.ones(y1.size, np.int32)
    pooling.max_pool_forward(x, planes, H, W, *window, y1, k1)
    pooling.max_pool_forward_parallel(x, planes, H, W, *window, y2, k2, shares)
    same(y1, y2)
    assert np.array_equal(k1, k2)
    dy = rand(y1.size)
    d1, d2 = np.full(x.size, 3, np.float32), np.full(x.size, 4, np.float32)
    pooling.max_pool_backward(dy, k1, planes, H * W, Ho * Wo, d1)
    pooling.max_pool_backward_parallel(dy, k1, planes, H * W, Ho * Wo, d2, shares)
    same(d1, d2)
    pooling.ave_pool_forward(x, planes, H, W, *window, y1)
    pooling.ave_pool_forward_parallel(x, planes, H, W, *window, y2, shares)
    same(y1, y2)
    pooling.ave_pool_backward(dy, planes, H, W, *window, d1)
    pooling.ave_pool_backward_parallel(dy, planes, H, W, *window, d2, shares)
    same(d1, d2)


def test_share_covers_every_item_once():
    for n in (0, 1, 5, 64, 1001):
        for k in (1, 2, 3, 8):
            cover = [i for t in range(k) for i in range(*share(n, t, k))]
            assert cover == list(range(n))


def test_the_twins_run_only_with_threads_and_enough_work(monkeypatch):
    monkeypatch.setattr(threads, "_count", 2)
    assert parts(threads.PARALLEL_MIN) == 2
    assert parts(threads.PARALLEL_MIN - 1) == 1
    assert pick(im2col.im2col_2d, threads.PARALLEL_MIN) is im2col.im2col_2d_parallel
    assert pick(im2col.im2col_2d, 10) is im2col.im2col_2d
    monkeypatch.setattr(threads, "_count", 1)
    assert parts(1 << 30) == 1
    assert pick(im2col.bias_grad, 1 << 30) is im2col.bias_grad
    # every registered twin is a parallel kernel of the same name
    for plain, twin in _twins.items():
        assert twin.__name__ == plain.__name__ + "_parallel"
        assert twin.targetoptions.get("parallel") is True


# ---------------------------------------------------------------- image shares on a team of threads

def test_a_team_runs_each_share_on_its_own_fixed_thread_serially_and_raises_a_shares_error(monkeypatch):
    import threading

    from numcaffe.layers.parallel import in_share, team
    threads.set_threads(2)
    monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
    seen = team().run(lambda t: (t, threading.get_ident(), in_share(), parts(1 << 30)), 2)
    assert [s[0] for s in seen] == [0, 1]
    assert seen[0][1] == threading.get_ident() != seen[1][1]       # share 0 on the caller
    assert all(s[2] and s[3] == 1 for s in seen)                   # loops inside a share stay serial
    assert team().run(lambda t: threading.get_ident(), 2) == [s[1] for s in seen]
    assert not in_share() and parts(1 << 30) == 2

    def fail(t):
        if t == 1:
            raise ValueError("share 1 failed")
        return t
    with pytest.raises(ValueError, match="share 1 failed"):
        team().run(fail, 2)
    assert team().run(lambda t: t, 2) == [0, 1]                     # the team still serves


def test_openblas_is_held_at_one_thread_inside_a_team_and_given_back_after():
    from threadpoolctl import threadpool_info

    from numcaffe.layers.parallel import team

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    threads.set_threads(2)
    inside = team().run(lambda t: blas(), 2)
    assert all(b == [1] * len(b) and b for b in inside)
    assert blas() and all(n == 2 for n in blas())


def test_image_shares_need_threads_images_and_work(monkeypatch):
    from numcaffe.layers import parallel
    threads.set_threads(2)
    assert parallel.image_shares(8, 2 * parallel.SHARE_MIN) == 2
    assert parallel.image_shares(8, 2 * parallel.SHARE_MIN - 2) == 1
    assert parallel.image_shares(1, 1 << 40) == 1
    monkeypatch.setattr(parallel, "_blas", ())                      # no threadpoolctl: OpenBLAS cannot be held
    assert parallel.image_shares(8, 1 << 40) == 1
    threads.set_threads(1)
    monkeypatch.undo()
    assert parallel.image_shares(8, 1 << 40) == 1


CONV_CASES = {   # each layout of layers/conv.py, with odd batch and group sizes
    "per_image": ("num_output: 6 kernel_size: 3 pad: 1", (5, 4, 17, 16)),
    "per_image groups": ("num_output: 6 kernel_size: 3 pad: 1 group: 2", (3, 4, 17, 16)),
    "per_image 1x1": ("num_output: 6 kernel_size: 1", (3, 4, 17, 16)),
    "rows": ("num_output: 6 kernel_size: 1 stride: 2", (5, 4, 9, 9)),
    "rows groups": ("num_output: 6 kernel_size: 3 group: 2", (5, 4, 9, 9)),
    "nhwc": ("num_output: 7 kernel_size: 3 pad: 1", (5, 4, 6, 6)),
    "depthwise": ("num_output: 8 kernel_size: 3 pad: 1 stride: 2 group: 4", (5, 4, 9, 9)),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_a_convolution_in_image_shares_gives_the_whole_batch_numbers(case, monkeypatch, tmp_path):
    from numcaffe.layers import parallel
    from numcaffe.net.pycaffe import pycaffe as caffe
    conv, shape = CONV_CASES[case]
    proto = tmp_path / "net.prototxt"
    proto.write_text(f'force_backward: true input: "data" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                     f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ '
                     f'{conv} weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" }} }} }}')
    results = []
    for shares_min in (1 << 62, 1):            # the whole batch on this thread, then image shares
        monkeypatch.setattr(parallel, "SHARE_MIN", shares_min)
        threads.set_threads(2)
        net = caffe.Net(str(proto), caffe.TEST)
        layer = net.layers[1]
        assert layer.layout == case.split()[0]
        assert layer._shares() == (2 if shares_min == 1 else 1)
        r = np.random.default_rng(3)
        for blob in layer.blobs:
            blob.data[...] = r.standard_normal(blob.shape)
            blob.diff[...] = 0.5                          # gradients add to what is there
        net.blobs["data"].data[...] = r.standard_normal(shape)
        net.forward()
        net.blobs["conv"].diff[...] = r.standard_normal(net.blobs["conv"].shape)
        net.backward()
        results.append([net.blobs["conv"].data.copy(), net.blobs["data"].diff.copy()]
                       + [b.diff.copy() for b in layer.blobs])
    # top, bottom diff, weight and bias diffs: OpenBLAS blocks a GEMM of fewer images differently,
    # and the parameter gradients are summed share by share, so float order differs
    whole, shared = results
    for a, b in zip(whole, shared):
        assert np.abs(a).max() > 0.1
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_nets_run_by_two_threads_at_once_take_the_team_in_turn_and_get_their_own_numbers(monkeypatch, tmp_path):
    import threading

    from numcaffe.layers import parallel
    from numcaffe.net.pycaffe import pycaffe as caffe
    monkeypatch.setattr(parallel, "SHARE_MIN", 1)
    threads.set_threads(2)
    proto = tmp_path / "net.prototxt"
    proto.write_text('force_backward: true input: "data" input_shape { dim: 6 dim: 3 dim: 16 dim: 16 }\n'
                     'layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" convolution_param { '
                     'num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }\n'
                     'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { '
                     'num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }\n')

    def run(seed, out, rounds):
        net = caffe.Net(str(proto), caffe.TEST)
        r = np.random.default_rng(seed)
        for blob in [net.blobs["data"]] + [b for name in ("c1", "c2") for b in net.params[name]]:
            blob.data[...] = r.standard_normal(blob.shape)
        for _ in range(rounds):
            net.clear_param_diffs()
            net.forward()
            net.blobs["c2"].diff[...] = 1.0
            net.backward()
        out[seed] = [net.blobs["c2"].data.copy(), net.blobs["data"].diff.copy(), net.params["c1"][0].diff.copy()]
    alone, together = {}, {}
    for seed in (1, 2):
        run(seed, alone, 1)
    workers = [threading.Thread(target=run, args=(seed, together, 20)) for seed in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for seed in (1, 2):
        for a, b in zip(alone[seed], together[seed]):
            same(a, b)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_in_image_shares_gives_bitwise_the_whole_batch_numbers(region, beta, monkeypatch, tmp_path):
    from numcaffe.layers import parallel
    from numcaffe.net.pycaffe import pycaffe as caffe
    proto = tmp_path / "net.prototxt"
    proto.write_text('force_backward: true input: "data" input_shape { dim: 5 dim: 7 dim: 6 dim: 5 }\n'
                     'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" '
                     f'lrn_param {{ local_size: 3 alpha: 0.5 beta: {beta} norm_region: {region} }} }}')
    results, runs = [], []
    real_run = parallel.Team.run
    monkeypatch.setattr(parallel.Team, "run", lambda team, fn, shares: runs.append(shares) or real_run(team, fn, shares))
    for shares_min in (1 << 62, 1):
        monkeypatch.setattr(parallel, "SHARE_MIN", shares_min)
        threads.set_threads(2)
        net = caffe.Net(str(proto), caffe.TEST)
        r = np.random.default_rng(4)
        net.blobs["data"].data[...] = r.standard_normal(net.blobs["data"].shape)
        net.forward()
        net.blobs["lrn"].diff[...] = r.standard_normal(net.blobs["lrn"].shape)
        net.backward()
        results.append((net.blobs["lrn"].data.copy(), net.blobs["data"].diff.copy()))
    assert runs == [2, 2]                      # forward and backward of the second net ran in shares
    for a, b in zip(*results):
        assert np.abs(a).max() > 0.1
        same(a, b)


def test_a_thread_budget_changed_between_forward_and_backward_never_reuses_anothers_columns(monkeypatch, tmp_path):
    from numcaffe.layers import parallel
    from numcaffe.net.pycaffe import pycaffe as caffe
    monkeypatch.setattr(parallel, "SHARE_MIN", 1)
    proto = tmp_path / "net.prototxt"
    proto.write_text('force_backward: true input: "data" input_shape { dim: 4 dim: 3 dim: 17 dim: 16 }\n'
                     'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { '
                     'num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }')
    grads = []
    for forward_threads in (1, 2):               # backward always on one thread
        threads.set_threads(forward_threads)
        net = caffe.Net(str(proto), caffe.TEST)
        r = np.random.default_rng(8)
        net.blobs["data"].data[...] = r.standard_normal(net.blobs["data"].shape)
        net.params["conv"][0].data[...] = r.standard_normal(net.params["conv"][0].shape)
        net.forward()
        threads.set_threads(1)
        net.blobs["conv"].diff[...] = 1.0
        net.backward()
        grads.append(net.params["conv"][0].diff.copy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_a_ctrl_c_while_the_caller_waits_is_raised_after_every_share_has_finished():
    import threading

    from numcaffe.layers.parallel import team
    threads.set_threads(2)
    crew = team()
    finished = threading.Event()

    def slow(t):
        if t == 1:
            finished.wait(0.2)
            finished.set()
        return t

    class Interrupting:                          # the first wait is cut by a Ctrl-C
        def __init__(self, box):
            self.box, self.cut = box, False

        def get(self):
            if not self.cut:
                self.cut = True
                raise KeyboardInterrupt
            return self.box.get()

        def put(self, item):
            self.box.put(item)
    real = crew.outbox
    crew.outbox = Interrupting(real)
    try:
        with pytest.raises(KeyboardInterrupt):
            crew.run(slow, 2)
        assert finished.is_set()                 # share 1 was done before run let go
    finally:
        crew.outbox = real
    assert crew.run(lambda t: ("fresh", t), 2) == [("fresh", 0), ("fresh", 1)]   # nothing stale is left over
