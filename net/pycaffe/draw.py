"""pycaffe's ``caffe.draw``: a NetParameter drawn with Graphviz, as ``numcaffe draw`` does.

The drawing is :mod:`numcaffe.net.draw`; these are pycaffe's names and argument orders.
pydot's ``get_pydot_graph`` is not provided (numcaffe builds a ``graphviz.Digraph``:
:func:`numcaffe.net.draw.build_graph`).
"""
from numcaffe.net import draw as _draw

__all__ = ["draw_net", "draw_net_to_file"]


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The image bytes of ``caffe_net`` (a NetParameter) in format ``ext``."""
    return _draw.render(caffe_net, ext, rankdir, phase, display_lrm)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the drawing of ``caffe_net``, in the format of ``filename``'s extension."""
    return _draw.draw(caffe_net, filename, rankdir, phase, display_lrm)
