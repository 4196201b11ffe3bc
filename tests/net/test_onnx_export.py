"""ONNX export: every model-zoo net numcaffe loads, and every exported layer type alone, run in
onnxruntime, equal numcaffe's forward blob by blob (1e-4 relative to each blob's largest value);
``onnx.checker`` accepts every model with full checks.  The zoo nets are also imported back (the other
round trips are in test_onnx_import.py), sharing the expensive part, building the net.
"""
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from numcaffe.net import TEST, Net
from numcaffe.net.config import read_message
from numcaffe.net.onnx import OnnxError, export_model, import_model
from numcaffe.net.onnx.export import EXPORTERS
from numcaffe.net.onnx.importer import IMPORTERS
from numcaffe.net.onnx.table import LAYER_TO_ONNX, ONNX_TO_LAYER
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.random import set_random_seed
from tests.net.onnx_util import assert_close, compare_net, run_onnx
from tests.net.test_zoo import ZOO, randomize

#: (file, input size or None for the net's own). AlexNet and CaffeNet run at 99 x 99 (fc6 shrinks
#: from 9216 to 1024 inputs, every pooling and LRN as in the original); the others at their own size,
#: GoogLeNet with its auxiliary classifiers.
ZOO_NETS = [("bvlc_alexnet.prototxt", 99), ("bvlc_reference_caffenet.prototxt", 99),
            ("bvlc_googlenet.prototxt", None), ("resnet50_deploy.prototxt", None),
            ("squeezenet_v1.1.prototxt", None), ("mobilenet_v1.prototxt", None),
            ("mobilenet_v2.prototxt", None), ("cifar10_quick.prototxt", None),
            ("cifar10_full.prototxt", None), ("mnist_siamese.prototxt", None),
            ("../../../configs/lenet/lenet_deploy.prototxt", None)]


def zoo_net(filename, size=None):
    param = read_message(str(ZOO / filename), caffe_pb2.NetParameter)
    dims = param.layer[0].input_param.shape[0].dim
    dims[0] = 1
    if size:
        dims[2] = dims[3] = size
    set_random_seed(5)
    # GoogLeNet with its auxiliary classifiers (stage "aux": 5x5 / 3 AVE pooling, two more heads).
    return Net(param, TEST, stages=("aux",) if "googlenet" in filename else ())


def feed(net, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in net.inputs:
        blob = net.blobs[name]
        blob.data[...] = rng.standard_normal(blob.shape, dtype=np.float32)
        feeds[name] = blob.data.copy()
    return feeds


def check_exported(net, feeds, **kw):
    net.forward()
    model = export_model(net, **kw)
    onnx.checker.check_model(model, full_check=True)
    return model, compare_net(net, model, feeds)


@pytest.mark.parametrize("filename, size", ZOO_NETS, ids=[f.split("/")[-1] for f, _ in ZOO_NETS])
def test_zoo_net_in_onnxruntime(filename, size):
    net = zoo_net(filename, size)
    randomize(net, seed=1)
    bn = [l for l in net.layers if l.type == "BatchNorm"]
    for layer in bn:              # a stored scale factor other than 1, as a trained Caffe model has
        layer.blobs[0].data[...] *= 3.5
        layer.blobs[1].data[...] *= 3.5
        layer.blobs[2].data[...] *= 3.5
    feeds = feed(net)
    model, errors = check_exported(net, feeds)
    assert net.outputs and all(o in errors for o in net.outputs)
    # ... and imported back: the same layers under the same names (the ONNX model keeps neither the Input
    # layer's name nor in-place wiring; WITHIN_CHANNEL LRN comes back as the operators it was spelled in),
    # the same weights under the same layer names, and the same outputs again from numcaffe.
    net_param, weights = import_model(model)
    def layers(param, learned=False):
        return sorted((l.name, l.type) for l in param.layer if l.type not in ("Input", "Split")
                      and (not learned or l.type in ("Convolution", "InnerProduct", "BatchNorm", "Scale")))
    assert layers(net_param, learned=True) == layers(net.net_param, learned=True)
    if not any(l.type == "LRN" and l.lrn_param.norm_region == l.lrn_param.WITHIN_CHANNEL
               for l in net.net_param.layer):
        assert layers(net_param) == layers(net.net_param)
    again = Net(net_param, TEST)
    again.copy_from(weights)
    for name, value in feeds.items():
        again.blobs[name].data[...] = value
    again.forward()
    for name in net.outputs:
        assert_close(again.blobs[name].data, net.blobs[name].data, name, rtol=1e-5)
    assert len(errors) >= len([l for l in net.layers if l.type not in ("Input", "Split")]) // 4
    inputs = model.graph.input[0].type.tensor_type.shape.dim
    assert inputs[0].dim_param == "N"                               # the batch stays symbolic
    # The logits before the softmax, where one exists, are compared too (not only saturated probabilities).
    assert any(l.type in ("InnerProduct", "Convolution") and l.name in errors for l in net.layers)


# ------------------------------------------------------------------ one layer at a time

#: id -> (input shapes, layer definitions reading x0, x1, ..., how to fill the inputs).
#: Pooling sizes are chosen for Caffe's edge cases: a ceil-mode last window hanging past the image,
#: a last window starting in the padding (dropped), asymmetric kernels, pads and strides.
LAYER_CASES = {
    "conv": ([(2, 3, 9, 9)], 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 }'),
    "conv_group_stride": ([(1, 4, 10, 10)], 'type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 '
                                            'stride: 2 group: 2 }'),
    "conv_dilation": ([(1, 2, 11, 11)], 'type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 '
                                        'dilation: 2 pad: 2 }'),
    "conv_asymmetric": ([(1, 3, 9, 12)], 'type: "Convolution" convolution_param { num_output: 2 kernel_h: 3 '
                                         'kernel_w: 5 pad_h: 0 pad_w: 2 stride_h: 2 stride_w: 3 bias_term: false }'),
    "conv_depthwise": ([(1, 4, 8, 8)], 'type: "Convolution" convolution_param { num_output: 8 kernel_size: 3 '
                                       'group: 4 pad: 1 stride: 2 }'),
    "deconv": ([(1, 4, 5, 5)], 'type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 stride: 2 '
                               'pad: 1 group: 2 }'),
    "deconv_asymmetric": ([(1, 2, 4, 6)], 'type: "Deconvolution" convolution_param { num_output: 3 kernel_h: 3 '
                                          'kernel_w: 2 stride_h: 1 stride_w: 2 dilation: 2 }'),
    "max_ceil_overhang": ([(1, 2, 8, 8)], 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'),
    "max_pad_drop_last": ([(1, 2, 5, 5)], 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 '
                                          'pad: 1 }'),
    "max_pad_ceil": ([(1, 2, 7, 7)], 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }'),
    "max_floor": ([(1, 2, 8, 8)], 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                                  'round_mode: FLOOR }'),
    "max_asymmetric": ([(1, 2, 9, 7)], 'type: "Pooling" pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 '
                                       'stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 }'),
    "max_global": ([(2, 3, 5, 4)], 'type: "Pooling" pooling_param { pool: MAX global_pooling: true }'),
    "ave_ceil_overhang": ([(1, 2, 8, 8)], 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 }'),
    "ave_pad_overhang": ([(1, 2, 6, 6)], 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                                         'pad: 1 }'),
    "ave_pad_drop_last": ([(1, 2, 5, 5)], 'type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 '
                                          'pad: 1 }'),
    "ave_pad_floor": ([(1, 2, 8, 8)], 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 '
                                      'round_mode: FLOOR }'),
    "ave_asymmetric": ([(1, 2, 9, 7)], 'type: "Pooling" pooling_param { pool: AVE kernel_h: 2 kernel_w: 3 '
                                       'stride_h: 2 stride_w: 2 pad_h: 0 pad_w: 1 }'),
    "ave_global": ([(2, 3, 5, 4)], 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }'),
    "stochastic_test": ([(1, 2, 7, 7)], 'type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }',
                        "positive"),
    "ip": ([(2, 3, 4, 4)], 'type: "InnerProduct" inner_product_param { num_output: 5 }'),
    "ip_transpose_no_bias": ([(2, 6)], 'type: "InnerProduct" inner_product_param { num_output: 4 transpose: true '
                                       'bias_term: false }'),
    "ip_axis2": ([(2, 3, 4, 5)], 'type: "InnerProduct" inner_product_param { num_output: 6 axis: 2 }'),
    "ip_axis_last_transpose": ([(2, 3, 5)], 'type: "InnerProduct" inner_product_param { num_output: 4 axis: -1 '
                                            'transpose: true bias_term: false }'),
    "batchnorm": ([(2, 3, 4, 4)], 'type: "BatchNorm" batch_norm_param { eps: 0.001 }'),
    "batchnorm_batch_stats": ([(3, 2, 3, 3)], 'type: "BatchNorm" batch_norm_param { use_global_stats: false }'),
    "batchnorm_2d": ([(4, 5)], 'type: "BatchNorm"'),
    "scale": ([(2, 3, 4, 4)], 'type: "Scale"'),
    "scale_bias_two_axes": ([(2, 3, 4, 5)], 'type: "Scale" scale_param { axis: 1 num_axes: 2 bias_term: true }'),
    "scale_bottom": ([(2, 3, 4, 5), (3, 4)], 'type: "Scale" scale_param { axis: 1 bias_term: true }'),
    "bias": ([(2, 3, 4)], 'type: "Bias" bias_param { axis: 2 }'),
    "bias_bottom": ([(2, 3, 4, 5), (2, 3)], 'type: "Bias" bias_param { axis: 0 }'),
    "lrn_across": ([(1, 7, 3, 3)], 'type: "LRN" lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 k: 2 }'),
    "lrn_within": ([(1, 2, 6, 5)], 'type: "LRN" lrn_param { local_size: 3 alpha: 0.2 beta: 0.6 '
                                   'norm_region: WITHIN_CHANNEL }'),
    "relu": ([(2, 3, 4)], 'type: "ReLU"'),
    "leaky_relu": ([(2, 3, 4)], 'type: "ReLU" relu_param { negative_slope: 0.1 }'),
    "prelu": ([(2, 3, 4, 4)], 'type: "PReLU"'),
    "prelu_shared": ([(2, 3, 4)], 'type: "PReLU" prelu_param { channel_shared: true }'),
    "elu": ([(2, 3, 4)], 'type: "ELU" elu_param { alpha: 0.5 }'),
    "selu": ([(2, 3, 4)], 'type: "SELU"'),
    "sigmoid": ([(2, 3, 4)], 'type: "Sigmoid"'),
    "tanh": ([(2, 3, 4)], 'type: "TanH"'),
    "absval": ([(2, 3, 4)], 'type: "AbsVal"'),
    "bnll": ([(2, 3, 4)], 'type: "BNLL"'),
    "swish": ([(2, 3, 4)], 'type: "Swish"'),
    "swish_beta": ([(2, 3, 4)], 'type: "Swish" swish_param { beta: 1.5 }'),
    "clip": ([(2, 3, 4)], 'type: "Clip" clip_param { min: -0.5 max: 0.7 }'),
    "threshold": ([(2, 3, 4)], 'type: "Threshold" threshold_param { threshold: 0.2 }'),
    "power": ([(2, 3, 4)], 'type: "Power" power_param { power: 2 scale: 0.5 shift: -1 }'),
    "power_fractional": ([(2, 3, 4)], 'type: "Power" power_param { power: 0.5 scale: 2 shift: 0.1 }', "positive"),
    "power_identity": ([(2, 3)], 'type: "Power"'),
    "exp": ([(2, 3, 4)], 'type: "Exp"'),
    "exp_base_shift_scale": ([(2, 3, 4)], 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }'),
    "log": ([(2, 3, 4)], 'type: "Log"', "positive"),
    "log_base_shift_scale": ([(2, 3, 4)], 'type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }', "positive"),
    "softmax": ([(2, 5)], 'type: "Softmax"'),
    "softmax_axis2": ([(2, 3, 4, 2)], 'type: "Softmax" softmax_param { axis: 2 }'),
    "concat": ([(2, 3, 4), (2, 2, 4)], 'type: "Concat"'),
    "concat_axis2": ([(2, 3, 4), (2, 3, 1), (2, 3, 2)], 'type: "Concat" concat_param { axis: -1 }'),
    "slice_points": ([(2, 7, 3)], 'type: "Slice" slice_param { axis: 1 slice_point: 2 slice_point: 3 }', 3),
    "slice_equal": ([(2, 3, 6)], 'type: "Slice" slice_param { axis: 2 }', 2),
    "eltwise_sum_coeff": ([(2, 3, 4)] * 3, 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 '
                                           'coeff: 2 }'),
    "eltwise_sum": ([(2, 3, 4)] * 2, 'type: "Eltwise"'),
    "eltwise_prod": ([(2, 3, 4)] * 3, 'type: "Eltwise" eltwise_param { operation: PROD }'),
    "eltwise_max": ([(2, 3, 4)] * 3, 'type: "Eltwise" eltwise_param { operation: MAX }'),
    "flatten": ([(2, 3, 4, 5)], 'type: "Flatten"'),
    "flatten_axis2": ([(2, 3, 4, 5)], 'type: "Flatten" flatten_param { axis: 2 }'),
    "flatten_middle": ([(2, 3, 4, 5)], 'type: "Flatten" flatten_param { axis: 1 end_axis: 2 }'),
    "reshape": ([(2, 3, 4, 5)], 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 5 } }'),
    "reshape_range": ([(2, 3, 4, 5)], 'type: "Reshape" reshape_param { shape { dim: 2 dim: 2 } axis: 2 '
                                      'num_axes: 1 }'),
    "crop": ([(2, 3, 8, 9), (1, 1, 5, 4)], 'type: "Crop" crop_param { axis: 2 offset: 1 offset: 3 }'),
    "crop_single_offset": ([(2, 4, 8, 9), (2, 2, 5, 4)], 'type: "Crop" crop_param { axis: 1 offset: 1 }'),
    "dropout": ([(2, 3, 4)], 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }'),
    "dropout_scale_at_test": ([(2, 3, 4)], 'type: "Dropout" dropout_param { dropout_ratio: 0.3 scale_train: false }'),
    "argmax": ([(2, 3, 4)], 'type: "ArgMax" argmax_param { top_k: 3 }'),
    "argmax_max_val": ([(2, 3, 4)], 'type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }'),
    "argmax_axis": ([(2, 5, 4)], 'type: "ArgMax" argmax_param { axis: 1 top_k: 2 }'),
    "argmax_axis_values": ([(2, 5, 4)], 'type: "ArgMax" argmax_param { axis: -1 out_max_val: true }'),
    "reduction_sum": ([(2, 3, 4)], 'type: "Reduction"'),
    "reduction_asum": ([(2, 3, 4)], 'type: "Reduction" reduction_param { operation: ASUM axis: 1 coeff: 0.5 }'),
    "reduction_sumsq": ([(2, 3, 4)], 'type: "Reduction" reduction_param { operation: SUMSQ axis: 2 }'),
    "reduction_mean": ([(2, 3, 4)], 'type: "Reduction" reduction_param { operation: MEAN axis: -2 coeff: -2 }'),
    "tile": ([(2, 3, 4)], 'type: "Tile" tile_param { axis: 1 tiles: 3 }'),
    "embed": ([(2, 3)], 'type: "Embed" embed_param { num_output: 4 input_dim: 7 }', "indices"),
    "embed_no_bias": ([(5,)], 'type: "Embed" embed_param { num_output: 3 input_dim: 4 bias_term: false }', "indices"),
}

#: Blob-free layers tested inside small nets: splits, in place chains, Silence.
NET_CASES = {
    "split_and_in_place": '''
        layer { name: "p" type: "Power" bottom: "x0" top: "x0" power_param { scale: 2 } }
        layer { name: "c" type: "Convolution" bottom: "x0" top: "c" convolution_param { num_output: 3 kernel_size: 1 } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
        layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
        layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
        layer { name: "a" type: "Sigmoid" bottom: "c" top: "a" }
        layer { name: "b" type: "TanH" bottom: "c" top: "b" }
        layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s" }
        layer { name: "q" type: "Eltwise" bottom: "x0" bottom: "s" top: "q" eltwise_param { operation: PROD } }''',
    "silence": '''
        layer { name: "a" type: "Sigmoid" bottom: "x0" top: "a" }
        layer { name: "b" type: "TanH" bottom: "x0" top: "b" }
        layer { name: "s" type: "Silence" bottom: "b" }''',
}


def net_text(shapes, body):
    inputs = "".join(f'layer {{ name: "in{k}" type: "Input" top: "x{k}" input_param {{ shape {{ '
                     + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for k, shape in enumerate(shapes))
    return 'name: "one"\n' + inputs + body


def layer_net(shapes, definition, tops=1):
    bottoms = " ".join(f'bottom: "x{k}"' for k in range(len(shapes)))
    top = " ".join(f'top: "y{k}"' for k in range(tops))
    return net_text(shapes, f'layer {{ name: "the_layer" {definition} {bottoms} {top} }}\n')


def randomize_params(net, rng):
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[2].data[...] = 4.0
            layer.blobs[0].data[...] = 4.0 * rng.uniform(-0.5, 0.5, c)
            layer.blobs[1].data[...] = 4.0 * rng.uniform(0.5, 1.5, c)
        else:
            for b in layer.blobs:
                b.data[...] = rng.uniform(-1.0, 1.0, b.shape)


def fill_inputs(net, kind, rng):
    feeds = {}
    for name in net.inputs:
        blob = net.blobs[name]
        if kind == "positive":
            v = rng.uniform(0.2, 2.0, blob.shape)
        elif kind == "indices":
            v = rng.integers(0, 4, blob.shape)
        else:
            v = rng.standard_normal(blob.shape)
        blob.data[...] = v
        feeds[name] = blob.data.copy()
    return feeds


def build_text(text, tmp_path, phase=TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    set_random_seed(3)
    return Net(str(path), phase)


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_in_onnxruntime(case, tmp_path):
    shapes, definition, *extra = LAYER_CASES[case]
    tops = next((e for e in extra if isinstance(e, int)), 1)
    kind = next((e for e in extra if isinstance(e, str)), "normal")
    net = build_text(layer_net(shapes, definition, tops), tmp_path)
    rng = np.random.default_rng(7)
    randomize_params(net, rng)
    feeds = fill_inputs(net, kind, rng)
    model, errors = check_exported(net, feeds)
    assert sorted(errors) == sorted(f"y{k}" for k in range(tops))


@pytest.mark.parametrize("case", sorted(NET_CASES))
def test_small_net_in_onnxruntime(case, tmp_path):
    net = build_text(net_text([(2, 3, 4, 4)], NET_CASES[case]), tmp_path)
    rng = np.random.default_rng(8)
    randomize_params(net, rng)
    model, errors = check_exported(net, fill_inputs(net, "normal", rng))
    assert set(errors) >= set(net.outputs)
    names = [o for n in model.graph.node for o in n.output]
    assert len(names) == len(set(names))                   # single assignment, every value once
    assert not any(n.op_type == "Split" or "split" in n.name for n in model.graph.node)


def test_in_place_chain_names_follow_the_blobs(tmp_path):
    net = build_text(net_text([(2, 3, 4, 4)], NET_CASES["split_and_in_place"]), tmp_path)
    model = export_model(net)
    outputs = {n.name: list(n.output) for n in model.graph.node}
    assert outputs["r"] == ["c"] and outputs["bn"] == ["c/bn"] and outputs["sc"] != ["c"]
    assert [i.name for i in model.graph.input] == ["x0"]               # the input keeps its name
    assert outputs["p"] == ["x0/p"]
    assert [o.name for o in model.graph.output] == ["q"]              # the one blob nothing consumes


def test_static_batch(tmp_path):
    net = build_text(layer_net([(2, 3, 4, 4)], 'type: "InnerProduct" inner_product_param { num_output: 2 }'),
                     tmp_path)
    dims = export_model(net, static_batch=True).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 4, 4]
    model = export_model(net)
    out = run_onnx(model, {"x0": np.ones((5, 3, 4, 4), np.float32)})   # a symbolic batch runs at 5
    assert out["y0"].shape == (5, 2)


@pytest.mark.parametrize("definition, phase, message", [
    ('type: "Accuracy"', TEST, "layer 'the_layer' (Accuracy) has no ONNX counterpart"),
    ('type: "Dropout"', caffe_pb2.TRAIN, "layer 'the_layer' (Dropout): Dropout is random in TRAIN"),
    ('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 }', caffe_pb2.TRAIN,
     "layer 'the_layer' (Pooling): STOCHASTIC pooling draws random windows in TRAIN"),
])
def test_unsupported_layers_are_one_clear_error(definition, phase, message, tmp_path):
    shapes = [(2, 3), (2,)] if "Accuracy" in definition else [(2, 3, 4, 4)]
    net = build_text(layer_net(shapes, definition), tmp_path, phase)
    with pytest.raises(OnnxError) as e:
        export_model(net)
    assert str(e.value).startswith(message)


def test_every_exported_type_has_a_layer_case_and_a_documented_row():
    tested = {re.search(r'type: "(\w+)"', definition).group(1) for _, definition, *_ in LAYER_CASES.values()}
    tested |= {t for body in NET_CASES.values() for t in re.findall(r'type: "(\w+)"', body)}
    assert set(EXPORTERS) - {"Split"} <= tested        # Split: inserted by the net wherever a blob is shared
    doc = (Path(__file__).resolve().parents[2] / "docs" / "onnx.md").read_text()
    for name in list(LAYER_TO_ONNX) + list(ONNX_TO_LAYER):
        assert f"| {name} |" in doc
    assert set(EXPORTERS) == set(LAYER_TO_ONNX) - {"Input"}                 # Input: a graph input, no function
    assert set(IMPORTERS) == set(ONNX_TO_LAYER) - {"Constant", "Shape"}     # computed at import, no layer
