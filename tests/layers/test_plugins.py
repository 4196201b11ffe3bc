"""Layer plugins: entry points of group ``numcaffe.layers`` add types; a broken one is reported, not fatal."""
import os
import subprocess
import sys
import textwrap

import pytest


def _plugin_dir(tmp_path, entry_points, modules):
    """A directory that importlib.metadata sees as an installed distribution."""
    dist = tmp_path / "numcaffe_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: numcaffe-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[numcaffe.layers]\n" + entry_points)
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    return tmp_path


def _run(tmp_path, code):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), os.getcwd()] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


GOOD = """
from numcaffe.layers import NeuronLayer, register

@register("Triple")
class TripleLayer(NeuronLayer):
    '''y = 3 x.'''
    def Forward_cpu(self, bottom, top):
        top[0].data[...] = 3 * bottom[0].data
    def Backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * top[0].diff

class Undecorated(NeuronLayer):
    '''Registered under its entry point's name.'''
    def Forward_cpu(self, bottom, top):
        top[0].data[...] = bottom[0].data
"""


def test_plugin_types_register_and_a_broken_plugin_is_reported(tmp_path):
    _plugin_dir(tmp_path, "good = nc_good_plugin\nIdentity2 = nc_good_plugin:Undecorated\n"
                          "broken = nc_broken_plugin\nmissing = nc_no_such_module\n",
                {"nc_good_plugin": GOOD, "nc_broken_plugin": "raise RuntimeError('plugin exploded')\n"})
    proc = _run(tmp_path, textwrap.dedent("""
        import numpy as np
        import numcaffe.layers as L
        from numcaffe.net.pycaffe.net_spec import NetSpec, layers as Ls
        print(sorted(n for n, _, _ in L.PLUGIN_ERRORS))
        print("Triple" in L.LAYER_REGISTRY, L.LAYER_REGISTRY.get("Identity2").__name__)
        n = NetSpec()
        n.x = Ls.Input(shape=dict(dim=[2]))
        n.y = Ls.Triple(n.x)
        net = n.to_net("TEST")
        print(net.forward(x=np.array([1, 2], np.float32))["y"].tolist())
    """))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["['broken', 'missing']", "True Undecorated", "[3.0, 6.0]"]
    assert "layer plugin 'broken' (nc_broken_plugin) failed to load and is skipped: RuntimeError: plugin exploded" \
        in proc.stderr
    assert "'missing'" in proc.stderr and "Traceback" not in proc.stderr


def test_plugin_types_appear_in_numcaffe_layers(tmp_path):
    _plugin_dir(tmp_path, "good = nc_good_plugin2\n", {"nc_good_plugin2": GOOD.replace("Triple", "Triple2")})
    proc = _run(tmp_path, "import sys; from numcaffe.tools.cli import main; sys.exit(main(['layers']))")
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("Triple2 ") for line in proc.stdout.splitlines())
