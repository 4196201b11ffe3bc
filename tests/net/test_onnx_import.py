"""ONNX import: export-then-import round trips give numcaffe's own outputs back, ONNX's own backend node
tests (the models and expected outputs the onnx package generates, written by nobody here) pass for every
operator numcaffe imports, and what cannot be imported is one error listing every node.
"""
import collections
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from numcaffe.net import TEST, Net
from numcaffe.net.errors import NumcaffeError
from numcaffe.net.onnx import OnnxError, export_model, import_model
from numcaffe.net.onnx.importer import IMPORTERS
from tests.net.onnx_util import run_onnx
from tests.net.test_onnx_export import LAYER_CASES, build_text, fill_inputs, layer_net, randomize_params


def imported_net(model, batch=1):
    net_param, weights = import_model(model, batch=batch)
    net = Net(net_param, TEST)
    net.copy_from(weights)
    return net


def forward(net, feeds):
    for name, value in feeds.items():
        net.blobs[name].data[...] = value
    net.forward()
    return net


#: Layer cases whose export is not imported back, and why.
NOT_ROUND_TRIPPED = {
    "batchnorm_batch_stats": "reducing axes [0, 2, 3]",
    "stochastic_test": "Div 'the_layer': division of two computed tensors",
    "argmax": "TopK",               # top_k > 1: TopK ranks ties the other way, and has no numcaffe layer
    "argmax_max_val": "TopK",
    "argmax_axis": "TopK",
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_round_trip(case, tmp_path):
    shapes, definition, *extra = LAYER_CASES[case]
    tops = next((e for e in extra if isinstance(e, int)), 1)
    kind = next((e for e in extra if isinstance(e, str)), "normal")
    net = build_text(layer_net(shapes, definition, tops), tmp_path)
    rng = np.random.default_rng(7)
    randomize_params(net, rng)
    feeds = fill_inputs(net, kind, rng)
    net.forward()
    model = export_model(net)
    if case in NOT_ROUND_TRIPPED:
        with pytest.raises(OnnxError, match=re.escape(NOT_ROUND_TRIPPED[case])):
            import_model(model, batch=shapes[0][0])
        return
    again = forward(imported_net(model, batch=shapes[0][0]), feeds)
    for k in range(tops):
        want = net.blobs[f"y{k}"].data
        np.testing.assert_allclose(again.blobs[f"y{k}"].data, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


# ------------------------------------------------------------------ ONNX's own node tests

#: Where a node test keeps a layer's weights as a graph input, numcaffe holds them as the layer's blobs:
#: those inputs (operator -> input positions) are given as constants from the test's own data.
PARAMETER_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                    "BatchNormalization": (1, 2, 3, 4), "PRelu": (1,), "Clip": (1, 2), "Pow": (1,), "Gather": (0,),
                    "Pad": (1, 2, 3), "Slice": (1, 2, 3, 4), "ReduceSum": (1,), "ReduceMean": (1,), "ReduceL1": (1,),
                    "ReduceSumSquare": (1,), "ReduceMax": (1,), "Tile": (1,), "Reshape": (1,), "Dropout": (1, 2),
                    "Greater": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,)}


def node_cases():
    from onnx.backend.test.case import node as onnx_node_cases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # some generators overflow casts on purpose
        cases = onnx_node_cases.collect_testcases(None)
    known = set(IMPORTERS) | {"Constant"}
    return [c for c in cases if c.data_sets and {n.op_type for n in c.model.graph.node} <= known]


def with_constant_parameters(model, inputs):
    """``model`` with the parameter inputs of its nodes turned into initializers holding ``inputs``' values."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph_inputs = [v.name for v in m.graph.input]
    wanted = {n.input[k] for n in m.graph.node for k in PARAMETER_INPUTS.get(n.op_type, ()) if k < len(n.input)}
    values = dict(zip(graph_inputs, inputs))
    keep = []
    for v in m.graph.input:
        if v.name in wanted and v.name in values:
            m.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(values[v.name]), v.name))
        else:
            keep.append(v)
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m, [values[v.name] for v in keep]


def run_node_case(case):
    """'shipped' / 'parameters' when numcaffe imports and passes it (as shipped, or with its parameter
    inputs as constants), or raises OnnxError for a model numcaffe does not import."""
    inputs, outputs = case.data_sets[0]
    model, feeds, how = case.model, list(inputs), "shipped"
    try:
        net_param, weights = import_model(model)
    except OnnxError:
        model, feeds = with_constant_parameters(model, inputs)
        if len(feeds) == len(inputs):
            raise
        net_param, weights, how = *import_model(model), "parameters"
    net = Net(net_param, TEST)
    net.copy_from(weights)
    names = [v.name for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    for name, value in zip(names, feeds):
        net.blobs[name].data[...] = np.asarray(value, dtype=np.float32)
    net.forward()
    for out, want in zip(model.graph.output, outputs):
        got = net.blobs[out.name].data
        np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64), rtol=max(case.rtol, 1e-4),
                                   atol=max(case.atol, 1e-6), err_msg=f"{case.name}: output {out.name}")
    return how


def test_onnx_backend_node_tests(capsys):
    cases = node_cases()
    passed, refused = collections.Counter(), collections.Counter()
    failures = []
    for case in cases:
        try:
            passed[run_node_case(case)] += 1
        except OnnxError as e:
            first = str(e).split(": ", 2)[2].split("; numcaffe")[0].split("; ")[0]
            refused[re.sub(r"'[^']*'|\([^)]*\)|\[[^]]*\]", "..", first)] += 1
        except (AssertionError, NumcaffeError) as e:
            failures.append(f"{case.name}: {e}")
    with capsys.disabled():
        print(f"\nONNX node tests whose operators numcaffe imports: {len(cases)}; imported and passed: "
              f"{sum(passed.values())} ({passed['shipped']} as shipped, {passed['parameters']} with their "
              f"parameter inputs as constants); refused with a reason: {sum(refused.values())}")
        for reason, n in refused.most_common(25):
            print(f"  {n:4d}  {reason}")
    assert not failures, "\n".join(failures)
    assert sum(passed.values()) >= 195            # 197 when this test was written (onnx 1.23)
    ops = {n.op_type for c in cases for n in c.model.graph.node}
    assert len(ops) >= 45


# ------------------------------------------------------------------ errors


def test_unsupported_operators_are_listed_in_one_error():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[0, 1, 3, 2]),
             helper.make_node("Relu", ["t"], ["r"], name="r1"),
             helper.make_node("HardSwish", ["r"], ["h"], name="h1"),
             helper.make_node("Transpose", ["h"], ["y"], name="t2", perm=[0, 1, 3, 2])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(OnnxError) as e:
        import_model(model)
    assert str(e.value) == ("<model>: 3 node(s) use operators numcaffe has no layer for: "
                            "HardSwish (1: 'h1'); Transpose (2: 't1', 't2')")


def test_nodes_numcaffe_cannot_reproduce_are_listed_together():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 5, 5])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = onnx.numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 1, 1]),
             helper.make_node("LRN", ["c"], ["n"], name="lrn", size=4),
             helper.make_node("Relu", ["n"], ["y"], name="ok")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(OnnxError) as e:
        import_model(model)
    assert str(e.value) == ("<model>: 2 node(s) numcaffe cannot reproduce exactly: Conv 'conv': asymmetric pads "
                            "[0, 0] / [1, 1]; Caffe pads both sides alike; LRN 'lrn': an even size (4); Caffe's LRN "
                            "windows are centred (odd sizes)")


def test_not_a_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(OnnxError, match="bad.onnx: not a readable ONNX model"):
        import_model(str(bad))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")                       # parses as an empty ModelProto
    with pytest.raises(OnnxError, match="empty.onnx: holds no graph"):
        import_model(str(empty))
    with pytest.raises(OnnxError, match="missing.onnx: no such file"):
        import_model(str(tmp_path / "missing.onnx"))


# ------------------------------------------------------------------ a model from another framework

TORCH_CNN = Path(__file__).resolve().parents[1] / "fixtures" / "onnx" / "torch_cnn.onnx"


@pytest.mark.parametrize("batch", [1, 3])
def test_pytorch_exported_model_imports_and_runs_as_onnxruntime_runs_it(batch):
    """tests/fixtures/onnx/torch_cnn.onnx was written by PyTorch's exporter (make_torch_cnn.py beside it):
    unfolded BatchNorm, PyTorch's pad-counting average pooling, ceil-mode max pooling, a PReLU slope that the
    exporter Unsqueezes at run time and a view whose target is computed from Shape (constant computations
    numcaffe folds), Concat, Gemm."""
    model = onnx.load(str(TORCH_CNN))
    assert model.producer_name == "pytorch"
    net = imported_net(model, batch=batch)
    assert [l.type for l in net.layers if l.type != "Split"] == [
        "Input", "Convolution", "BatchNorm", "Scale", "ReLU", "Convolution", "PReLU", "Pooling", "Eltwise",
        "Pooling", "Convolution", "ReLU", "Concat", "Reshape", "InnerProduct", "Softmax"]
    reshape = next(l for l in net.layers if l.type == "Reshape")
    assert list(reshape.layer_param.reshape_param.shape.dim) == [0, -1]     # the batch copied, not fixed
    x = np.random.default_rng(batch).standard_normal((batch, 3, 15, 15)).astype(np.float32)
    want = run_onnx(model, {"data": x})["prob"]
    got = forward(net, {"data": x}).blobs["prob"].data
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def average_pool_model(size, kernel, stride, pad, ceil):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, size, size])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[kernel] * 2,
                            strides=[stride] * 2, pads=[pad] * 4, ceil_mode=ceil, count_include_pad=1)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("size, kernel, stride, pad, ceil", [(6, 3, 2, 1, 1), (7, 3, 2, 1, 1), (6, 2, 2, 1, 1),
                                                            (7, 3, 2, 1, 0), (9, 5, 3, 2, 1)])
def test_average_pool_counting_pads_in_ceil_mode_is_caffes(size, kernel, stride, pad, ceil):
    """count_include_pad with symmetric pads: a last window past the padding divides by its part inside the
    padded image in onnxruntime and in ONNX's reference implementation, as in Caffe (PyTorch's
    AvgPool2d(ceil_mode=True, padding=p) exports this)."""
    from onnx.reference import ReferenceEvaluator
    model = average_pool_model(size, kernel, stride, pad, ceil)
    data = np.random.default_rng(size).standard_normal((1, 2, size, size)).astype(np.float32)
    got = forward(imported_net(model), {"x": data}).blobs["y"].data
    np.testing.assert_allclose(got, run_onnx(model, {"x": data})["y"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, ReferenceEvaluator(model).run(None, {"x": data})[0], rtol=1e-5, atol=1e-7)


def test_a_last_window_caffe_drops_is_refused():
    """Caffe drops a ceil-mode window that starts in the padding; ONNX's shape inference keeps it."""
    with pytest.raises(OnnxError, match=re.escape("AveragePool 'pool': no Caffe pooling gives output (4, 4) from "
                                                  "(5, 5) with kernel [2, 2], stride [2, 2], pad [1, 1]")):
        import_model(average_pool_model(5, 2, 2, 1, 1))
