"""Convolution and Deconvolution: Caffe's im2col + GEMM convolution.

Convolution (weights ``(M, C/g, *kernel)``, g groups; ``col = im2col(x)``, the
column matrix of layers/im2col.py, K rows of input pixels, one column per
output position)::

    y[g] = W[g] @ col[g] + b                             (per group g)
    dW[g] += dy[g] @ col[g].T;  db += sum(dy);  dx = col2im(W[g].T @ dy[g])

Deconvolution is the same pair run backwards (weights ``(C, M/g, *kernel)``)::

    y = col2im(W[g].T @ x[g]) + b;  dx[g] = W[g] @ im2col(dy)[g];  dW[g] += x[g] @ im2col(dy)[g].T

Parameters and output sizes are Caffe's (layers/geometry.py).

How the work is laid out (measured on LeNet, see bench/bench_conv.py; the
copies themselves are in layers/im2col.py):

* Images with many output positions (``P >= PER_IMAGE_MIN_P``) get one GEMM
  each, as in Caffe, but through numpy's stacked matmul (one call for the
  batch) writing straight into the NCHW top.  Images with few positions are
  batched into one column matrix and one GEMM per chunk.  With one group and
  two axes (LeNet's conv2) the columns are ``(N * P, K)`` rows of NHWC pixels
  ordered (kernel row, kernel column, channel), so each kernel row is one run
  of ``kw * C`` pixels, and the three GEMMs take the forms OpenBLAS runs
  fastest here (``col @ W.T``, ``dy.T @ col``, ``dy @ W``: 4.0 against 4.6 ms
  for the ``(K, N * P)`` layout); jitted transposes to and from NCHW.
  Otherwise, and when the weights are big (``SMALL_WEIGHTS``: the NHWC layout
  pays weight-sized transposes, dearer than the GEMMs for ResNet's res5 at
  batch 1), ``(K, N * P)`` columns.  Groups are one stacked matmul, never a loop.
* Columns and other scratch arrays live in one workspace per thread, shared
  by all convolution layers (grown as needed, freed with the last layer);
  batches whose columns exceed ``COL_LIMIT`` elements run in chunks of images.  When one chunk holds the
  whole batch and no other layer has used the column buffer since, backward
  reuses forward's columns for the weight gradient (in a chain of convolutions,
  the last one).  (Smaller, cache-sized chunks were measured on LeNet:
  no gain that stood out of the noise.)
* Depthwise convolution (``group == channels``, 2-D) skips im2col: the direct
  kernels of layers/depthwise.py, channel multiplier allowed.
* The kernels are serial: on two cores, numba's threads and OpenBLAS's threads
  took the cores from each other (measured 2x slower); the GEMMs use OpenBLAS's.
  Running half the images of the per-image path on a helper thread made conv1
  alone 1.5x faster but LeNet training no faster (10.1 against 10.2-10.4 ms).
"""
import threading
import weakref

import numpy as np

from numcaffe.layers.base import Layer, register
from numcaffe.layers.depthwise import (depthwise_backward, depthwise_backward_s1, depthwise_forward,
                                       depthwise_forward_s1)
from numcaffe.layers.geometry import conv_output_shape, conv_window
from numcaffe.layers.im2col import (NO_BIAS, Im2colGeometry, add_bias, bias_grad, col2im_nhwc, from_cols, from_rows,
                                    im2col_nhwc, to_cols, to_rows)
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill

#: Largest column buffer (in float32 elements) a layer uses; bigger batches run in chunks.
COL_LIMIT = 1 << 22
#: Output positions per image from which each image gets its own GEMM (else one GEMM per chunk).
PER_IMAGE_MIN_P = 256
#: Elements of the stacked per-image weight-gradient products summed at once.
DW_BATCH_LIMIT = 1 << 20
#: Largest weight (elements) for the NHWC layout and for the transposed weight-gradient GEMM: both
#: pay weight-sized transposed copies, cheap for LeNet's conv2 (25,000) and dear for ResNet's res5
#: 3x3 (2.4 M: 2.6 against 6.9 ms forward at batch 1; the weight gradient 2.3 against 12.4 ms).
SMALL_WEIGHTS = 1 << 17


class _Workspace:
    """Named float32 scratch arrays shared by every convolution layer that runs on one thread.

    Layers of a thread run one at a time, so one column buffer serves them all
    (Caffe gives each layer its own, which for a deep net -- or LeNet's TRAIN
    and TEST nets -- multiplies the biggest scratch array by the number of
    layers).  Arrays grow to the largest request; ``COL_LIMIT`` bounds the
    biggest.  Each name remembers which layer took it last, so a layer knows
    whether what it wrote there (forward's columns) is still there.  The arrays
    are freed when the last layer made on the thread is gone.
    """

    def __init__(self):
        self.arrays = {}
        self.owners = {}
        self.users = 0

    def get(self, owner, name, size):
        a = self.arrays.get(name)
        if a is None or a.size < size:
            a = np.zeros(max(int(size), 1), dtype=np.float32)
            self.arrays[name] = a
        self.owners[name] = owner
        return a[:size]

    def leave(self):
        self.users -= 1
        if self.users <= 0:
            self.arrays.clear()
            self.owners.clear()


_THREAD = threading.local()


def _workspace():
    """This thread's workspace."""
    ws = getattr(_THREAD, "workspace", None)
    if ws is None:
        ws = _THREAD.workspace = _Workspace()
    return ws


class _Scratch:
    """One layer's handle on the shared workspace of the thread it runs on."""

    def __init__(self):
        self.token = object()  # names the layer in the workspace without keeping it alive
        home = _workspace()
        home.users += 1
        weakref.finalize(self, home.leave)

    def get(self, name, size):
        return _workspace().get(self.token, name, size)

    def holds(self, name):
        """Whether no other layer has taken ``name`` since this one did."""
        return _workspace().owners.get(name) is self.token


def _gemm(a, b, out):
    """out[g] = a[g] @ b[g] for stacked matrices; a plain 2-D GEMM when there is one group."""
    if a.shape[0] == 1:
        np.matmul(a[0], b[0], out=out[0])
    else:
        np.matmul(a, b, out=out)


class BaseConvolutionLayer(Layer):
    """What Convolution and Deconvolution share: parameters, weights, shapes, buffers."""

    min_num_bottom = 1
    min_num_top = 1
    equal_num_bottom_top = True
    #: Deconvolution: the weights map outputs to inputs.
    reverse = False

    def LayerSetUp(self, bottom, top):
        p = self.layer_param.convolution_param
        self.channel_axis = bottom[0].canonical_axis(p.axis)
        self.num_spatial = bottom[0].num_axes - self.channel_axis - 1
        self.kernel, self.stride, self.pad, self.dilation = conv_window(self, p, self.num_spatial)
        self.force_nd = p.force_nd_im2col
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = p.num_output
        self.group = p.group
        if self.num_output <= 0:
            raise ConfigError(f"{self.describe()}: num_output must be positive")
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise ConfigError(f"{self.describe()}: group {self.group} must divide both the input "
                              f"channels ({self.channels}) and num_output ({self.num_output})")
        out_ch, in_ch = ((self.channels, self.num_output) if self.reverse
                         else (self.num_output, self.channels))
        weight_shape = (out_ch, in_ch // self.group, *self.kernel)
        self.bias_term = p.bias_term
        if self.blobs:
            if len(self.blobs) != 1 + self.bias_term:
                raise ConfigError(f"{self.describe()}: expected {1 + self.bias_term} parameter blobs "
                                  f"(weights{' and bias' if self.bias_term else ''}), got {len(self.blobs)}")
            if self.blobs[0].shape != weight_shape:
                raise ConfigError(f"{self.describe()}: weight shape must be {weight_shape}, "
                                  f"got {self.blobs[0].shape}")
            if self.bias_term and self.blobs[1].shape != (self.num_output,):
                raise ConfigError(f"{self.describe()}: bias shape must be ({self.num_output},), "
                                  f"got {self.blobs[1].shape}")
        else:
            self.blobs = [Blob(weight_shape)]
            fill(self.blobs[0], p.weight_filler, self.random)
            if self.bias_term:
                self.blobs.append(Blob((self.num_output,)))
                fill(self.blobs[1], p.bias_filler, self.random)
        self.buffers = _Scratch()
        self._geometry_key = None

    def Reshape(self, bottom, top):
        b0 = bottom[0]
        ax = self.channel_axis
        if b0.num_axes != ax + 1 + self.num_spatial:
            raise self.shape_error(f"the input must keep {ax + 1 + self.num_spatial} axes, got shape {b0.shape}")
        if b0.shape[ax] != self.channels:
            raise self.shape_error(f"the input has {b0.shape[ax]} channels; the weights were made "
                                   f"for {self.channels}")
        for b in bottom[1:]:
            if b.shape != b0.shape:
                raise self.shape_error(f"all inputs must have the same shape; got {b0.shape} and {b.shape}")
        in_spatial = list(b0.shape[ax + 1:])
        out_spatial = conv_output_shape(in_spatial, self.kernel, self.stride, self.pad, self.dilation,
                                        reverse=self.reverse)
        if any(o <= 0 for o in out_spatial):
            raise self.shape_error(f"input of spatial shape {tuple(in_spatial)} gives output "
                                   f"{tuple(out_spatial)} with kernel {self.kernel}, stride "
                                   f"{self.stride}, pad {self.pad}, dilation {self.dilation}")
        top_shape = (*b0.shape[:ax], self.num_output, *out_spatial)
        for t in top:
            if any(t is b for b in bottom):
                raise self.shape_error("cannot run in place")
            t.reshape(top_shape)
        self.num = b0.count_range(0, ax)
        key = (self.num, tuple(in_spatial))
        if key != self._geometry_key:
            self._geometry_key = key
            self.setup_geometry(in_spatial, out_spatial)

    def setup_geometry(self, in_spatial, out_spatial):
        # The convolution's "image" side and "column" side; Deconvolution swaps them.
        if self.reverse:
            img_ch, img_sp, col_sp = self.num_output, out_spatial, in_spatial
        else:
            img_ch, img_sp, col_sp = self.channels, in_spatial, out_spatial
        self.in_spatial, self.out_spatial = in_spatial, out_spatial
        self.depthwise = (not self.reverse and self.num_spatial == 2
                          and self.group == self.channels and self.group > 1)
        if self.depthwise:
            return
        self.geo = Im2colGeometry(img_ch, img_sp, col_sp, self.kernel, self.stride, self.pad, self.dilation,
                           nd=self.force_nd)
        per_image = self.geo.rows * self.geo.P
        self.chunk = max(1, min(self.num, COL_LIMIT // max(per_image, 1)))

    def _chunks(self):
        N, chunk = self.num, self.chunk
        return [(n0, min(chunk, N - n0)) for n0 in range(0, N, chunk)]

    def _depthwise_args_s1(self):
        return (*self.in_spatial, self.blobs[0].flat_data, self.num_output, *self.kernel, *self.pad,
                *self.dilation, *self.out_spatial)

    def _depthwise_args(self):
        return (*self.in_spatial, self.blobs[0].flat_data, self.num_output, *self.kernel, *self.stride,
                *self.pad, *self.dilation, *self.out_spatial)


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """y[n, m] = b[m] + sum over c in m's group and kernel taps of W[m, c, k] x[n, c, o*s - p + k*d]."""

    def setup_geometry(self, in_spatial, out_spatial):
        super().setup_geometry(in_spatial, out_spatial)
        self.per_image = self.nhwc = False
        if not self.depthwise:
            # Many output positions per image: one GEMM per image (numpy's stacked matmul) straight
            # into NCHW.  Few: one GEMM for the whole chunk in the (rows, N*P) layout.
            self.per_image = self.geo.P >= PER_IMAGE_MIN_P
            # Few positions, two axes, one group: NHWC columns, one (N*P, K) matrix, whose three
            # GEMMs OpenBLAS runs faster and whose im2col copies runs of kw * C pixels.
            self.nhwc = (not self.per_image and self.geo.two_d and self.group == 1
                         and self.blobs[0].count <= SMALL_WEIGHTS)
        self._cached = False

    def _nhwc_columns(self, x, n0, n):
        """The (n * P, K) columns of images n0 .. n0+n, rows (oh, ow), columns (i, j, c)."""
        geo = self.geo
        xh = self.buffers.get("nhwc", n * geo.image_size)
        to_cols(x[n0 * geo.image_size:(n0 + n) * geo.image_size], n, geo.C, geo.isize, xh, NO_BIAS, False)
        col = self.buffers.get("col", geo.rows * self.chunk * geo.P)[:geo.rows * n * geo.P]
        im2col_nhwc(xh, n, geo.C, *geo.args_2d, col)
        return col.reshape(n * geo.P, geo.rows)

    def _nhwc_weights(self):
        """The weights (M, C, taps) reordered to the NHWC columns' (M, taps, C)."""
        M, C = self.num_output, self.channels
        Wp = self.buffers.get("w_nhwc", self.blobs[0].count).reshape(M, -1, C)
        np.copyto(Wp, self.blobs[0].data.reshape(M, C, -1).transpose(0, 2, 1))
        return Wp.reshape(M, -1)

    def _columns(self, x, n0, n, col):
        """The columns of images n0 .. n0+n: (n, K, P) per image, or (K, n*P) batched."""
        geo = self.geo
        xs = x[n0 * geo.image_size:(n0 + n) * geo.image_size]
        if self.per_image:
            if geo.identity:
                return xs
            geo.im2col(xs, n, col, geo.P, geo.rows * geo.P)
        else:
            geo.to_columns(xs, n, col)
        return col

    def Forward_cpu(self, bottom, top):
        bias = self.blobs[1].flat_data if self.bias_term else NO_BIAS
        if self.depthwise:
            for b, t in zip(bottom, top):
                if self.stride == [1, 1]:
                    depthwise_forward_s1(b.flat_data, self.num, self.channels, *self._depthwise_args_s1(),
                                         bias, self.bias_term, t.flat_data)
                else:
                    depthwise_forward(b.flat_data, self.num, self.channels, *self._depthwise_args(),
                                      bias, self.bias_term, t.flat_data)
            return
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        if self.nhwc:
            Wp = self._nhwc_weights()
            for b, t in zip(bottom, top):
                for n0, n in self._chunks():
                    out = self.buffers.get("rows", n * P * M).reshape(n * P, M)
                    np.matmul(self._nhwc_columns(b.flat_data, n0, n), Wp.T, out=out)
                    from_cols(out.reshape(-1), n, M, P, bias, self.bias_term, t.flat_data[n0 * M * P:(n0 + n) * M * P])
            self._cached = len(bottom) == 1 and self.chunk >= self.num
            return
        Mg, Kg = M // G, K // G
        Wg = self.blobs[0].flat_data.reshape(G, Mg, Kg)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        for b, t in zip(bottom, top):
            x, y = b.flat_data, t.flat_data
            for n0, n in self._chunks():
                col = self._columns(x, n0, n, col_buf[:K * n * P])
                ys = y[n0 * M * P:(n0 + n) * M * P]
                if self.per_image:
                    if G == 1:
                        np.matmul(Wg[0], col.reshape(n, K, P), out=ys.reshape(n, M, P))
                    else:
                        np.matmul(Wg, col.reshape(n, G, Kg, P), out=ys.reshape(n, G, Mg, P))
                    if self.bias_term:
                        add_bias(ys, n, M, P, bias)
                else:
                    out = self.buffers.get("rows", M * n * P)
                    _gemm(Wg, col.reshape(G, Kg, n * P), out.reshape(G, Mg, n * P))
                    from_rows(out, n, M, P, bias, self.bias_term, ys)
        # One chunk holds every image: backward reuses these columns for the weight gradient.
        self._cached = len(bottom) == 1 and self.chunk >= self.num

    def Backward_cpu(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        db = self.blobs[1].flat_diff if self.bias_term else NO_BIAS
        if self.depthwise:
            for i, (b, t) in enumerate(zip(bottom, top)):
                if want_b:
                    bias_grad(t.flat_diff, self.num, self.num_output, t.count // (self.num * self.num_output), db)
                if not (want_w or propagate_down[i]):
                    continue
                if self.stride == [1, 1]:
                    depthwise_backward_s1(b.flat_data, t.flat_diff, self.num, self.channels,
                                          *self._depthwise_args_s1(), self.blobs[0].flat_diff, want_w,
                                          b.flat_diff, propagate_down[i])
                else:
                    depthwise_backward(b.flat_data, t.flat_diff, self.num, self.channels, *self._depthwise_args(),
                                       self.blobs[0].flat_diff, want_w, b.flat_diff, propagate_down[i])
            return
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        # Forward's columns are still there only if no other layer took the buffer since.
        self._cached = self._cached and self.buffers.holds("col")
        if self.nhwc:
            return self._backward_nhwc(top, propagate_down, bottom, want_w, want_b, db)
        Mg, Kg = M // G, K // G
        WgT = self.blobs[0].flat_data.reshape(G, Mg, Kg).transpose(0, 2, 1)
        dW = self.blobs[0].flat_diff
        col_buf = self.buffers.get("col", K * self.chunk * P)
        dW_tmp = self.buffers.get("dW", M * Kg).reshape(G, Mg, Kg)
        dWT_tmp = self.buffers.get("dW", M * Kg).reshape(G, Kg, Mg)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy, x, dx = t.flat_diff, b.flat_data, b.flat_diff
            if want_b and (self.per_image or not (want_w or propagate_down[i])):
                bias_grad(dy, self.num, M, P, db)
            if not (want_w or propagate_down[i]):
                continue
            for n0, n in self._chunks():
                dys = dy[n0 * M * P:(n0 + n) * M * P]
                dxs = dx[n0 * geo.image_size:(n0 + n) * geo.image_size]
                col = col_buf[:K * n * P]
                if self.per_image:
                    dy4 = dys.reshape(n, G, Mg, P)
                    if want_w:
                        if not self._cached or geo.identity:
                            col = self._columns(x, n0, n, col)
                        self._weight_grad_per_image(dy4, col.reshape(n, G, Kg, P), dW_tmp)
                        dW += dW_tmp.reshape(-1)
                    if propagate_down[i]:
                        if geo.identity:
                            np.matmul(WgT, dy4, out=dxs.reshape(n, G, Kg, P))
                        else:
                            np.matmul(WgT, dy4, out=col.reshape(n, G, Kg, P))
                            self._cached = False
                            geo.col2im(col, P, K * P, n, dxs)
                else:
                    rows = self.buffers.get("rows", M * n * P)
                    to_rows(dys, n, M, P, rows, db, want_b)
                    rows_g = rows.reshape(G, Mg, n * P)
                    if want_w:
                        if not self._cached:
                            col = self._columns(x, n0, n, col)
                        if self.blobs[0].count <= SMALL_WEIGHTS:
                            # dW.T = col @ rows.T: OpenBLAS runs this form faster than rows @ col.T
                            # on small weights (LeNet's conv2: 1.4 against 2.1 ms) ...
                            _gemm(col.reshape(G, Kg, n * P), rows_g.transpose(0, 2, 1), dWT_tmp)
                            dW.reshape(G, Mg, Kg)[...] += dWT_tmp.transpose(0, 2, 1)
                        else:  # ... but the transposed add is dear on big ones (SMALL_WEIGHTS)
                            _gemm(rows_g, col.reshape(G, Kg, n * P).transpose(0, 2, 1), dW_tmp)
                            dW += dW_tmp.reshape(-1)
                    if propagate_down[i]:
                        _gemm(WgT, rows_g, col.reshape(G, Kg, n * P))
                        self._cached = False
                        geo.from_columns(col, n, dxs)
            self._cached = False

    def _backward_nhwc(self, top, propagate_down, bottom, want_w, want_b, db):
        geo = self.geo
        M, K, P, C = self.num_output, geo.rows, geo.P, geo.C
        Wp = self._nhwc_weights()
        dW = self.blobs[0].diff.reshape(M, C, -1)
        dWp = self.buffers.get("dW", M * K).reshape(M, K)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy, x, dx = t.flat_diff, b.flat_data, b.flat_diff
            if not (want_w or propagate_down[i]):
                if want_b:
                    bias_grad(dy, self.num, M, P, db)
                continue
            for n0, n in self._chunks():
                dyT = self.buffers.get("rows", n * P * M)
                to_cols(dy[n0 * M * P:(n0 + n) * M * P], n, M, P, dyT, db, want_b)
                dyT = dyT.reshape(n * P, M)
                col = self.buffers.get("col", K * self.chunk * P)[:K * n * P].reshape(n * P, K)
                if want_w:
                    if not self._cached:
                        col = self._nhwc_columns(x, n0, n)
                    np.matmul(dyT.T, col, out=dWp)
                    dW += dWp.reshape(M, -1, C).transpose(0, 2, 1)
                if propagate_down[i]:
                    np.matmul(dyT, Wp, out=col)
                    self._cached = False
                    xh = self.buffers.get("nhwc", n * geo.image_size)
                    col2im_nhwc(col.reshape(-1), n, C, *geo.args_2d, xh)
                    from_cols(xh, n, C, geo.isize, NO_BIAS, False, dx[n0 * geo.image_size:(n0 + n) * geo.image_size])
            self._cached = False

    def _weight_grad_per_image(self, dy4, col4, out):
        """out = sum over images n of dy[n] @ col[n].T (per group), a few images per stacked GEMM."""
        n, G, Mg, P = dy4.shape
        Kg = col4.shape[2]
        step = max(1, min(n, DW_BATCH_LIMIT // max(G * Mg * Kg, 1)))
        tmp = self.buffers.get("dWstack", step * G * Mg * Kg)
        part = self.buffers.get("dWpart", G * Mg * Kg).reshape(G, Mg, Kg)
        out[...] = 0.0
        for s in range(0, n, step):
            k = min(step, n - s)
            t4 = tmp[:k * G * Mg * Kg].reshape(k, G, Mg, Kg)
            np.matmul(dy4[s:s + k], col4[s:s + k].transpose(0, 1, 3, 2), out=t4)
            np.sum(t4, axis=0, out=part)
            out += part


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """The transpose of Convolution: y = col2im(W.T @ x) + b, weights (C_in, num_output/g, *kernel)."""

    reverse = True

    def Forward_cpu(self, bottom, top):
        geo = self.geo
        G, C, K, P = self.group, self.channels, geo.rows, geo.P  # P: input positions; K: outputs x taps
        Cg, Kg = C // G, K // G
        Wt = self.blobs[0].flat_data.reshape(G, Cg, Kg).transpose(0, 2, 1)
        xrows_buf = self.buffers.get("xrows", C * self.chunk * P)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        for b, t in zip(bottom, top):
            x, y = b.flat_data, t.flat_data
            for n0, n in self._chunks():
                xrows, col = xrows_buf[:C * n * P], col_buf[:K * n * P]
                to_rows(x[n0 * C * P:(n0 + n) * C * P], n, C, P, xrows, NO_BIAS, False)
                _gemm(Wt, xrows.reshape(G, Cg, n * P), col.reshape(G, Kg, n * P))
                geo.from_columns(col, n, y[n0 * geo.image_size:(n0 + n) * geo.image_size])
            if self.bias_term:
                add_bias(y, self.num, self.num_output, geo.isize, self.blobs[1].flat_data)

    def Backward_cpu(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        geo = self.geo
        G, C, K, P = self.group, self.channels, geo.rows, geo.P
        Cg, Kg = C // G, K // G
        Wg = self.blobs[0].flat_data.reshape(G, Cg, Kg)
        dW = self.blobs[0].flat_diff
        xrows_buf = self.buffers.get("xrows", C * self.chunk * P)
        col_buf = self.buffers.get("col", K * self.chunk * P)
        dW_tmp = self.buffers.get("dW", C * Kg).reshape(G, Cg, Kg)
        for i, (b, t) in enumerate(zip(bottom, top)):
            dy = t.flat_diff
            if want_b:
                bias_grad(dy, self.num, self.num_output, geo.isize, self.blobs[1].flat_diff)
            if not (want_w or propagate_down[i]):
                continue
            x, dx = b.flat_data, b.flat_diff
            for n0, n in self._chunks():
                xrows, col = xrows_buf[:C * n * P], col_buf[:K * n * P]
                geo.to_columns(dy[n0 * geo.image_size:(n0 + n) * geo.image_size], n, col)
                col_g = col.reshape(G, Kg, n * P)
                if want_w:
                    to_rows(x[n0 * C * P:(n0 + n) * C * P], n, C, P, xrows, NO_BIAS, False)
                    _gemm(xrows.reshape(G, Cg, n * P), col_g.transpose(0, 2, 1), dW_tmp)
                    dW += dW_tmp.reshape(-1)
                if propagate_down[i]:
                    _gemm(Wg, col_g, xrows.reshape(G, Cg, n * P))
                    from_rows(xrows, n, C, P, NO_BIAS, False, dx[n0 * C * P:(n0 + n) * C * P])
