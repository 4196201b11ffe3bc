"""Convolution and Deconvolution: Caffe's im2col + GEMM convolution.

Convolution (weights ``(M, C/g, *kernel)``, g groups; ``col = im2col(x)``, the
column matrix of layers/im2col.py, K rows of input pixels, one column per
output position)::

    y[g] = W[g] @ col[g] + b                             (per group g)
    dW[g] += dy[g] @ col[g].T;  db += sum(dy);  dx = col2im(W[g].T @ dy[g])

Deconvolution is the same pair run backwards (weights ``(C, M/g, *kernel)``)::

    y = col2im(W[g].T @ x[g]) + b;  dx[g] = W[g] @ im2col(dy)[g];  dW[g] += x[g] @ im2col(dy)[g].T

Parameters and output sizes are Caffe's (layers/geometry.py).  Which path a
convolution runs for which shape, and the measurements that chose it, is
``choose_layout``; each path is a pair of ``_forward_<path>`` /
``_backward_<path>`` methods over the kernels of layers/im2col.py (column copies
and layout transposes) or layers/depthwise.py.  A faster path is a second
module-level kernel next to the plain one, chosen by shape: in
``choose_layout`` when it changes the layout, else inside its path (as the
stride-1 depthwise kernels are).

* Columns and other scratch arrays live in the thread's workspace
  (layers/workspace.py), shared by all convolution layers; batches whose columns
  exceed ``COL_LIMIT`` elements (``CACHE_COLS`` in the per-image layout) run in
  chunks of images.  When one chunk holds the whole batch (or share) and no other
  layer has used the column buffer since, backward reuses forward's columns for
  the weight gradient (in a chain of convolutions, the last one).
* With more than one thread, a pass cuts its batch into image shares, one per
  thread, each running the plain path on its own thread with OpenBLAS held at one
  thread (layers/parallel.py's ``Team``; parameter gradients summed per share,
  then in share order).  Smaller passes (``SHARE_MIN``) and batch-1 passes keep
  the whole batch on one thread: the column copies, layout transposes and bias
  sums then take their parallel twins (layers/im2col.py) when the copy is big,
  and the GEMMs OpenBLAS's threads (docs/threads.md).  Numba's and OpenBLAS's
  pools take turns on the cores: their idle threads sleep instead of spinning
  (net/threads.py), which is what made a first ``parallel=True`` attempt 2x slower.
"""
import numpy as np

from numcaffe.layers.base import Layer, register
from numcaffe.layers.depthwise import (depthwise_backward, depthwise_backward_s1, depthwise_forward,
                                       depthwise_forward_s1)
from numcaffe.layers.geometry import conv_output_shape, conv_window
from numcaffe.layers.im2col import (NO_BIAS, Im2colGeometry, add_bias, bias_grad, col2im_nhwc, from_cols,
                                    from_rows, im2col_nhwc, to_cols, to_rows)
from numcaffe.layers.parallel import image_shares, in_shares, pick
from numcaffe.layers.workspace import Scratch
from numcaffe.net.blob import Blob
from numcaffe.net.errors import ConfigError
from numcaffe.net.filler import fill

#: Largest column buffer (in float32 elements) a layer uses; bigger batches run in chunks.
COL_LIMIT = 1 << 22
#: PER_IMAGE chunks: their GEMMs are per image anyway, so a chunk's columns (in float32 elements)
#: are kept cache-sized, written and read back before they leave the cache (CIFAR-10 quick, batch
#: 100, 2 threads: forward 31.5 -> 28.4 ms, forward+backward 88 -> 79-81 ms, against COL_LIMIT).
CACHE_COLS = 1 << 19
#: Output positions per image from which each image gets its own GEMM (else one GEMM per chunk).
PER_IMAGE_MIN_P = 256
#: Elements of the stacked per-image weight-gradient products summed at once.
DW_BATCH_LIMIT = 1 << 20
#: Largest weight (elements) for the NHWC layout and for the transposed weight-gradient GEMM: both
#: pay weight-sized transposed copies, cheap for LeNet's conv2 (25,000) and dear for ResNet's res5
#: 3x3 (2.4 M: 2.6 against 6.9 ms forward at batch 1; the weight gradient 2.3 against 12.4 ms).
SMALL_WEIGHTS = 1 << 17

#: The paths a Convolution runs; ``choose_layout`` says which, for which shape.
DEPTHWISE, PER_IMAGE, NHWC, ROWS = "depthwise", "per_image", "nhwc", "rows"


def choose_layout(spatial_axes, channels, group, positions, two_d, weight_count, taps=2):
    """The path a Convolution of this shape runs, and why (timed with bench/bench_conv.py).

    * DEPTHWISE when ``group == channels > 1`` on two spatial axes: im2col would
      copy each pixel once per tap for GEMMs of one input channel each; the direct
      kernels of layers/depthwise.py read each plane once (channel multiplier
      allowed; bench/bench_depthwise.py times them against PyTorch).
    * PER_IMAGE when an image has many output positions (``positions >=
      PER_IMAGE_MIN_P``): one GEMM per image, as in Caffe, but through numpy's
      stacked matmul (one call for the batch) writing straight into the NCHW top.
    * NHWC when positions are few, with two axes (``two_d``: not
      ``force_nd_im2col``), one group and small weights (LeNet's conv2): the
      columns are ``(N * P, K)`` rows of NHWC pixels ordered (kernel row, kernel
      column, channel), so each kernel row is one run of ``kw * C`` pixels, and the
      three GEMMs take the forms OpenBLAS runs fastest here (``col @ W.T``,
      ``dy.T @ col``, ``dy @ W``: 4.0 against 4.6 ms for the ``(K, N * P)``
      layout); jitted transposes to and from NCHW.  Not for big weights
      (``weight_count > SMALL_WEIGHTS``): the layout pays weight-sized transposes,
      dearer than the GEMMs for ResNet's res5 at batch 1.  Not for 1x1 kernels (``taps == 1``):
      their columns are the input itself, and the NHWC transposes only add copies (ResNet's
      res4a_branch2a, 512 -> 256 at stride 2, batch 8: 12.9 / 25.5 ms forward / backward
      in NHWC, 2.8 / 6.0 in ROWS).
    * ROWS otherwise: the images of a chunk batched into one ``(K, N * P)``
      column matrix and one GEMM per chunk.  Groups are one stacked matmul, never
      a loop.  (Deconvolution always runs this layout.)
    """
    if spatial_axes == 2 and group == channels and group > 1:
        return DEPTHWISE
    if positions >= PER_IMAGE_MIN_P:
        return PER_IMAGE
    if two_d and group == 1 and weight_count <= SMALL_WEIGHTS and taps > 1:
        return NHWC
    return ROWS


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
        self.buffers = Scratch(self.describe())
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
            self.in_spatial, self.out_spatial = in_spatial, out_spatial
            self.setup_geometry()

    def setup_geometry(self):
        """The im2col geometry (the convolution's "image" and "column" sides; Deconvolution
        swaps them) and how many images a chunk of columns holds."""
        if self.reverse:
            img_ch, img_sp, col_sp = self.num_output, self.out_spatial, self.in_spatial
        else:
            img_ch, img_sp, col_sp = self.channels, self.in_spatial, self.out_spatial
        self.geo = Im2colGeometry(img_ch, img_sp, col_sp, self.kernel, self.stride, self.pad, self.dilation,
                                  nd=self.force_nd)
        per_image = self.geo.rows * self.geo.P
        limit = CACHE_COLS if getattr(self, "layout", None) == PER_IMAGE else COL_LIMIT
        self.chunk = max(1, min(self.num, limit // max(per_image, 1)))

    def workspace_count(self):
        """The column buffer (K x chunk x P), and Deconvolution's input rows, the largest scratch arrays."""
        geo = getattr(self, "geo", None)
        if geo is None or getattr(self, "layout", None) == DEPTHWISE:
            return 0
        rows = self.channels * self.chunk * geo.P if self.reverse else 0
        # image shares each take at most a chunk of columns, on their own thread
        return geo.rows * min(self.num, self.chunk * self._shares()) * geo.P + rows

    def _shares(self):
        """Into how many shares of images a pass cuts the batch (1: Deconvolution always)."""
        return 1

    def _chunks(self, lo=0, hi=None):
        """(first image, images) of each chunk of images lo .. hi (the whole batch by default)."""
        hi, chunk = self.num if hi is None else hi, self.chunk
        return [(n0, min(chunk, hi - n0)) for n0 in range(lo, hi, chunk)]


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """y[n, m] = b[m] + sum over c in m's group and kernel taps of W[m, c, k] x[n, c, o*s - p + k*d]."""

    def setup_geometry(self):
        self.positions = int(np.prod(self.out_spatial, dtype=np.int64))
        self.layout = choose_layout(self.num_spatial, self.channels, self.group, self.positions,
                                    self.num_spatial == 2 and not self.force_nd, self.blobs[0].count,
                                    int(np.prod(self.kernel)))
        if self.layout != DEPTHWISE:
            super().setup_geometry()
        self.image_size = self.channels * int(np.prod(self.in_spatial, dtype=np.int64))
        self.macs = self.num * self.positions * self.blobs[0].count
        self._cached = False

    def _shares(self):
        """Into how many shares of images a pass cuts the batch, each on its own thread
        (layers/parallel.py's ``image_shares``); 1 runs it here, OpenBLAS threading the GEMMs."""
        return image_shares(self.num, self.macs)

    def Forward_cpu(self, bottom, top):
        bias = self.blobs[1].flat_data if self.bias_term else NO_BIAS
        forward = getattr(self, "_forward_" + self.layout)
        shares = self._shares()
        for b, t in zip(bottom, top):
            x, y = b.flat_data, t.flat_data
            in_shares(self.num, shares, lambda lo, hi: forward(x, y, bias, lo, hi))
        # One chunk holds each share's images: backward reuses these columns for the weight gradient
        # (if it cuts the batch the same way: the thread budget may change in between).
        self._cached = (self.layout != DEPTHWISE and len(bottom) == 1
                        and self.chunk >= -(-self.num // shares))
        self._cached_shares = shares

    def Backward_cpu(self, top, propagate_down, bottom):
        want_w = self.param_propagate_down[0]
        want_b = self.bias_term and self.param_propagate_down[1]
        dW = self.blobs[0].flat_diff
        db = self.blobs[1].flat_diff if self.bias_term else NO_BIAS
        backward = getattr(self, "_backward_" + self.layout)
        shares = self._shares()
        self._cached = self._cached and self._cached_shares == shares
        for i, (b, t) in enumerate(zip(bottom, top)):
            x, dy, dx, want_dx = b.flat_data, t.flat_diff, b.flat_diff, propagate_down[i]
            if not (want_w or want_dx):
                if want_b:
                    pick(bias_grad, t.count)(dy, self.num, self.num_output, self.positions, db)
            elif shares == 1:
                backward(x, dy, dx, want_w, want_b, dW, db, want_dx, 0, self.num, self._cached)
            else:
                def one(lo, hi):
                    # each share sums its images' parameter gradients apart; they are added below,
                    # in share order (a run is bitwise itself at a fixed thread count)
                    acc_w, acc_b = dW, db
                    if want_w:
                        acc_w = self.buffers.get("share_dW", dW.size)
                        acc_w[...] = 0.0
                    if want_b:
                        acc_b = self.buffers.get("share_db", db.size)
                        acc_b[...] = 0.0
                    backward(x, dy, dx, want_w, want_b, acc_w, acc_b, want_dx, lo, hi, self._cached)
                    return acc_w, acc_b
                for acc_w, acc_b in in_shares(self.num, shares, one):
                    if want_w:
                        dW += acc_w
                    if want_b:
                        db += acc_b
            self._cached = False

    # -- DEPTHWISE: direct kernels; stride 1 has its own -------------------------------

    def _depthwise_args(self):
        """The kernels' geometry arguments after (x, N, C): the stride-1 kernels take no stride."""
        stride = () if self.stride == [1, 1] else self.stride
        return (*self.in_spatial, self.blobs[0].flat_data, self.num_output, *self.kernel, *stride,
                *self.pad, *self.dilation, *self.out_spatial)

    def _forward_depthwise(self, x, y, bias, lo, hi):
        kernel = depthwise_forward_s1 if self.stride == [1, 1] else depthwise_forward
        xi, yi = self.image_size, self.num_output * self.positions
        kernel(x[lo * xi:hi * xi], hi - lo, self.channels, *self._depthwise_args(), bias, self.bias_term,
               y[lo * yi:hi * yi])

    def _backward_depthwise(self, x, dy, dx, want_w, want_b, dW, db, want_dx, lo, hi, cached):
        xi, yi = self.image_size, self.num_output * self.positions
        x, dx, dy = x[lo * xi:hi * xi], dx[lo * xi:hi * xi], dy[lo * yi:hi * yi]
        if want_b:
            pick(bias_grad, dy.size)(dy, hi - lo, self.num_output, self.positions, db)
        kernel = depthwise_backward_s1 if self.stride == [1, 1] else depthwise_backward
        kernel(x, dy, hi - lo, self.channels, *self._depthwise_args(), dW, want_w, dx, want_dx)

    # -- PER_IMAGE and ROWS: (K, P) columns per image or (K, N * P) per chunk -----------

    def _columns(self, x, n0, n, col):
        """The columns of images n0 .. n0+n: (n, K, P) per image, or (K, n*P) batched."""
        geo = self.geo
        xs = x[n0 * geo.image_size:(n0 + n) * geo.image_size]
        if self.layout == PER_IMAGE:
            if geo.identity:
                return xs
            geo.im2col(xs, n, col, geo.P, geo.rows * geo.P)
        else:
            geo.to_columns(xs, n, col)
        return col

    def _forward_per_image(self, x, y, bias, lo, hi):
        G, M, K, P = self.group, self.num_output, self.geo.rows, self.geo.P
        Wg = self.blobs[0].flat_data.reshape(G, M // G, K // G)
        col_buf = self.buffers.get("col", K * min(self.chunk, hi - lo) * P)
        for n0, n in self._chunks(lo, hi):
            col = self._columns(x, n0, n, col_buf[:K * n * P])
            ys = y[n0 * M * P:(n0 + n) * M * P]
            if G == 1:
                np.matmul(Wg[0], col.reshape(n, K, P), out=ys.reshape(n, M, P))
            else:
                np.matmul(Wg, col.reshape(n, G, K // G, P), out=ys.reshape(n, G, M // G, P))
            if self.bias_term:
                pick(add_bias, ys.size)(ys, n, M, P, bias)

    def _backward_per_image(self, x, dy, dx, want_w, want_b, dW, db, want_dx, lo, hi, cached):
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        Mg, Kg = M // G, K // G
        if want_b:
            pick(bias_grad, (hi - lo) * M * P)(dy[lo * M * P:hi * M * P], hi - lo, M, P, db)
        WgT = self.blobs[0].flat_data.reshape(G, Mg, Kg).transpose(0, 2, 1)
        # Forward's columns are still there only if no other layer took this thread's buffer since.
        cached = cached and self.buffers.holds("col")
        col_buf = self.buffers.get("col", K * min(self.chunk, hi - lo) * P)
        dW_tmp = self.buffers.get("dW", M * Kg).reshape(G, Mg, Kg)
        for n0, n in self._chunks(lo, hi):
            dy4 = dy[n0 * M * P:(n0 + n) * M * P].reshape(n, G, Mg, P)
            dxs = dx[n0 * geo.image_size:(n0 + n) * geo.image_size]
            col = col_buf[:K * n * P]
            if want_w:
                if not cached or geo.identity:
                    col = self._columns(x, n0, n, col)
                self._weight_grad_per_image(dy4, col.reshape(n, G, Kg, P), dW_tmp)
                dW += dW_tmp.reshape(-1)
            if want_dx:
                if geo.identity:
                    np.matmul(WgT, dy4, out=dxs.reshape(n, G, Kg, P))
                else:
                    np.matmul(WgT, dy4, out=col.reshape(n, G, Kg, P))
                    cached = False
                    geo.col2im(col, P, K * P, n, dxs)

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

    def _forward_rows(self, x, y, bias, lo, hi):
        G, M, K, P = self.group, self.num_output, self.geo.rows, self.geo.P
        Wg = self.blobs[0].flat_data.reshape(G, M // G, K // G)
        col_buf = self.buffers.get("col", K * min(self.chunk, hi - lo) * P)
        for n0, n in self._chunks(lo, hi):
            col = self._columns(x, n0, n, col_buf[:K * n * P])
            out = self.buffers.get("rows", M * n * P)
            _gemm(Wg, col.reshape(G, K // G, n * P), out.reshape(G, M // G, n * P))
            pick(from_rows, out.size)(out, n, M, P, bias, self.bias_term, y[n0 * M * P:(n0 + n) * M * P])

    def _backward_rows(self, x, dy, dx, want_w, want_b, dW, db, want_dx, lo, hi, cached):
        geo = self.geo
        G, M, K, P = self.group, self.num_output, geo.rows, geo.P
        Mg, Kg = M // G, K // G
        WgT = self.blobs[0].flat_data.reshape(G, Mg, Kg).transpose(0, 2, 1)
        cached = cached and self.buffers.holds("col")
        col_buf = self.buffers.get("col", K * min(self.chunk, hi - lo) * P)
        dW_tmp = self.buffers.get("dW", M * Kg).reshape(G, Mg, Kg)
        dWT_tmp = self.buffers.get("dW", M * Kg).reshape(G, Kg, Mg)
        for n0, n in self._chunks(lo, hi):
            col = col_buf[:K * n * P]
            rows = self.buffers.get("rows", M * n * P)
            pick(to_rows, rows.size)(dy[n0 * M * P:(n0 + n) * M * P], n, M, P, rows, db, want_b)  # db += sum dy
            rows_g = rows.reshape(G, Mg, n * P)
            if want_w:
                if not cached:
                    col = self._columns(x, n0, n, col)
                if self.blobs[0].count <= SMALL_WEIGHTS:
                    # dW.T = col @ rows.T: OpenBLAS runs this form faster than rows @ col.T
                    # on small weights (LeNet's conv2: 1.4 against 2.1 ms) ...
                    _gemm(col.reshape(G, Kg, n * P), rows_g.transpose(0, 2, 1), dWT_tmp)
                    dW.reshape(G, Mg, Kg)[...] += dWT_tmp.transpose(0, 2, 1)
                else:  # ... but the transposed add is dear on big ones (SMALL_WEIGHTS)
                    _gemm(rows_g, col.reshape(G, Kg, n * P).transpose(0, 2, 1), dW_tmp)
                    dW += dW_tmp.reshape(-1)
            if want_dx:
                _gemm(WgT, rows_g, col.reshape(G, Kg, n * P))
                cached = False
                geo.from_columns(col, n, dx[n0 * geo.image_size:(n0 + n) * geo.image_size])

    # -- NHWC: (N * P, K) columns of NHWC pixels ------------------------------------

    def _nhwc_columns(self, x, n0, n):
        """The (n * P, K) columns of images n0 .. n0+n, rows (oh, ow), columns (i, j, c)."""
        geo = self.geo
        xh = self.buffers.get("nhwc", n * geo.image_size)
        pick(to_cols, xh.size)(x[n0 * geo.image_size:(n0 + n) * geo.image_size], n, geo.C, geo.isize, xh, NO_BIAS,
                               False)
        col = self.buffers.get("col", geo.rows * n * geo.P)
        pick(im2col_nhwc, col.size)(xh, n, geo.C, *geo.args_2d, col)
        return col.reshape(n * geo.P, geo.rows)

    def _nhwc_weights(self):
        """The weights (M, C, taps) reordered to the NHWC columns' (M, taps, C)."""
        M, C = self.num_output, self.channels
        Wp = self.buffers.get("w_nhwc", self.blobs[0].count).reshape(M, -1, C)
        np.copyto(Wp, self.blobs[0].data.reshape(M, C, -1).transpose(0, 2, 1))
        return Wp.reshape(M, -1)

    def _forward_nhwc(self, x, y, bias, lo, hi):
        M, P = self.num_output, self.geo.P
        Wp = self._nhwc_weights()
        for n0, n in self._chunks(lo, hi):
            out = self.buffers.get("rows", n * P * M).reshape(n * P, M)
            np.matmul(self._nhwc_columns(x, n0, n), Wp.T, out=out)
            pick(from_cols, out.size)(out.reshape(-1), n, M, P, bias, self.bias_term, y[n0 * M * P:(n0 + n) * M * P])

    def _backward_nhwc(self, x, dy, dx, want_w, want_b, dW, db, want_dx, lo, hi, cached):
        geo = self.geo
        M, K, P, C = self.num_output, geo.rows, geo.P, geo.C
        Wp = self._nhwc_weights()
        dW = dW.reshape(M, C, -1)
        dWp = self.buffers.get("dW", M * K).reshape(M, K)
        cached = cached and self.buffers.holds("col")
        for n0, n in self._chunks(lo, hi):
            dyT = self.buffers.get("rows", n * P * M)
            pick(to_cols, dyT.size)(dy[n0 * M * P:(n0 + n) * M * P], n, M, P, dyT, db, want_b)  # db += sum dy
            dyT = dyT.reshape(n * P, M)
            col = self.buffers.get("col", K * n * P).reshape(n * P, K)
            if want_w:
                if not cached:
                    col = self._nhwc_columns(x, n0, n)
                np.matmul(dyT.T, col, out=dWp)
                dW += dWp.reshape(M, -1, C).transpose(0, 2, 1)
            if want_dx:
                np.matmul(dyT, Wp, out=col)
                cached = False
                xh = self.buffers.get("nhwc", n * geo.image_size)
                pick(col2im_nhwc, col.size)(col.reshape(-1), n, C, *geo.args_2d, xh)
                pick(from_cols, xh.size)(xh, n, C, geo.isize, NO_BIAS, False,
                                         dx[n0 * geo.image_size:(n0 + n) * geo.image_size])


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
