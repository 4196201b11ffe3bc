"""The ``Python`` layer: pycaffe-style user layers inside a net, and clear errors around them."""
import sys
import textwrap

import numpy as np
import pytest

from numcaffe.net.errors import ConfigError, NumcaffeError
from numcaffe.net.net import TEST, TRAIN, Net


def _write_net(tmp_path, body, name="net.prototxt"):
    path = tmp_path / name
    path.write_text('name: "py"\nlayer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                    + textwrap.dedent(body))
    return str(path)


def _py_layer(module, layer, param_str="", name="py", bottom='bottom: "x"', top='top: "y"'):
    return (f'layer {{ name: "{name}" type: "Python" {bottom} {top} '
            f'python_param {{ module: "{module}" layer: "{layer}" param_str: "{param_str}" }} }}\n')


@pytest.fixture
def unique_module(tmp_path):
    """A module file beside the config, with a name no other test uses."""
    name = f"user_layers_{tmp_path.name.replace('-', '_')}"
    yield name
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_module_beside_the_config_runs_in_a_net(tmp_path, unique_module):
    (tmp_path / f"{unique_module}.py").write_text(textwrap.dedent("""
        from numcaffe.layers.python_layer import Layer
        class Double(Layer):
            def setup(self, bottom, top):
                self.seen = (self.param_str, self.phase)
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
            def backward(self, top, propagate_down, bottom):
                bottom[0].diff[...] = 2 * top[0].diff
    """))
    path = _write_net(tmp_path, _py_layer(unique_module, "Double", param_str="hello"))
    net = Net(path, TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(x=x)
    np.testing.assert_array_equal(out["y"], 2 * x)
    assert net.layer_dict["py"].impl.seen == ("hello", TEST)


def test_learnable_blobs_are_net_params_and_saved(tmp_path):
    path = _write_net(tmp_path, _py_layer("tests.layers.pylayers", "Affine", param_str="4"))
    net = Net(path, TRAIN)
    assert [b.shape for b in net.params["py"]] == [(3, 4), (4,)]
    assert len(net.learnable_params) == 2
    net.params["py"][1].data[...] = 7.0
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    again = Net(path, TRAIN, weights=str(weights))
    np.testing.assert_array_equal(again.params["py"][1].data, 7.0)


def test_plain_class_without_base_gets_phase(tmp_path):
    path = _write_net(tmp_path, _py_layer("tests.layers.pylayers", "PhaseEcho", bottom=""))
    assert Net(path, TEST).forward()["y"][0] == TEST
    assert Net(path, TRAIN).forward()["y"][0] == TRAIN


def test_missing_module_names_the_search_path(tmp_path):
    path = _write_net(tmp_path, _py_layer("no_such_layer_module", "X"))
    with pytest.raises(ConfigError) as e:
        Net(path)
    msg = str(e.value)
    assert "layer 'py' (Python)" in msg and "'no_such_layer_module' not found" in msg and str(tmp_path) in msg


def test_missing_class_suggests_near_names(tmp_path):
    path = _write_net(tmp_path, _py_layer("tests.layers.pylayers", "Cub"))
    with pytest.raises(ConfigError, match=r"has no class 'Cub'; did you mean 'Cube'"):
        Net(path)


def test_module_and_layer_are_required(tmp_path):
    path = _write_net(tmp_path, 'layer { name: "py" type: "Python" bottom: "x" top: "y" }\n')
    with pytest.raises(ConfigError, match="needs both 'module' and 'layer'"):
        Net(path)


def test_import_error_inside_the_module_is_reported_as_such(tmp_path, unique_module):
    (tmp_path / f"{unique_module}.py").write_text("import numpy_does_not_exist_here\n")
    path = _write_net(tmp_path, _py_layer(unique_module, "X"))
    with pytest.raises(ConfigError, match=f"importing Python module '{unique_module}' failed: "
                                          f"No module named 'numpy_does_not_exist_here'"):
        Net(path)


def test_syntax_error_in_the_module(tmp_path, unique_module):
    (tmp_path / f"{unique_module}.py").write_text("def broken(:\n")
    path = _write_net(tmp_path, _py_layer(unique_module, "X"))
    with pytest.raises(ConfigError, match="SyntaxError"):
        Net(path)


def test_exception_in_user_code_is_a_numcaffe_error_naming_the_layer(tmp_path):
    path = _write_net(tmp_path, _py_layer("tests.layers.pylayers", "Broken", bottom=""))
    net = Net(path)
    with pytest.raises(NumcaffeError, match=r"layer 'py' \(Python\): tests.layers.pylayers.Broken.forward\(\) "
                                            r"raised ValueError: something went wrong in forward \(at .*pylayers.py:\d+\)"):
        net.forward()


def test_setup_error_from_user_code(tmp_path):
    body = _py_layer("tests.layers.pylayers", "EuclideanLoss", top='top: "loss"')
    path = _write_net(tmp_path, body)
    with pytest.raises(NumcaffeError, match="Need two inputs to compute distance"):
        Net(path)


def test_cli_reports_python_layer_errors_cleanly(tmp_path, capsys):
    from tests.tools.test_errors import assert_clean_error, cli
    path = _write_net(tmp_path, _py_layer("no_such_layer_module", "X"))
    status, _, err = cli(["draw", path, str(tmp_path / "x.dot")], capsys)
    assert status == 0  # drawing does not import the layer's code
    status, _, err = cli(["gradcheck", path], capsys)
    assert_clean_error(status, err, "'no_such_layer_module' not found")


def test_pycaffe_code_ports_with_the_documented_import(tmp_path, unique_module):
    # the docs promise that `import numcaffe.layers.python_layer as caffe` ports pycaffe layers;
    # those compare self.phase with caffe.TRAIN / caffe.TEST
    (tmp_path / f"{unique_module}.py").write_text(textwrap.dedent("""
        import numcaffe.layers.python_layer as caffe
        class DropInTrain(caffe.Layer):
            def setup(self, bottom, top):
                assert self.phase in (caffe.TRAIN, caffe.TEST)
            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)
            def forward(self, bottom, top):
                top[0].data[...] = bottom[0].data * (0 if self.phase == caffe.TRAIN else 1)
            def backward(self, top, propagate_down, bottom):
                pass
    """))
    path = _write_net(tmp_path, _py_layer(unique_module, "DropInTrain"))
    x = np.ones((2, 3), np.float32)
    assert Net(path, TRAIN).forward(x=x)["y"].sum() == 0
    assert Net(path, TEST).forward(x=x)["y"].sum() == 6
