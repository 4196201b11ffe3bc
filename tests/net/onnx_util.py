"""Running exported models in onnxruntime, and comparing them with numcaffe blob by blob."""
import numpy as np
import onnx
import onnxruntime as ort


def run_onnx(model, feeds, names=()):
    """Run ``model`` in onnxruntime; returns {name: array} for its outputs and the values ``names``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def assert_close(got, want, name, rtol=1e-4):
    """Equal to ``rtol`` relative to the blob's largest magnitude (1e-4 of it, the issue's bar)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-6)
    err = np.abs(got - want).max(initial=0.0) / scale
    assert err <= rtol, f"{name}: relative error {err:.3g} > {rtol:g}"
    return err


def compare_net(net, model, feeds, rtol=1e-4):
    """onnxruntime's value of every blob the net holds at the end (its final version) against numcaffe's
    forward; returns {blob: relative error}.  Blobs written in place are compared at their last write."""
    produced = {o for n in model.graph.node for o in n.output}
    names = [b for b in net.blobs if b in produced]
    got = run_onnx(model, feeds, names)
    errors = {}
    for name in names:
        errors[name] = assert_close(got[name], net.blobs[name].data, name, rtol)
    for out in model.graph.output:
        assert out.name in errors, f"output {out.name} not compared"
    return errors
