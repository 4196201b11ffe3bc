"""``numcaffe layers``: the registry and the schema, listed; docs/layers.md is its --markdown output."""
import re
from pathlib import Path

import pytest

import numcaffe.layers  # noqa: F401
from numcaffe.layers.base import LAYER_REGISTRY, Layer
from numcaffe.tools.layers import describe_types, param_fields, snake_case, to_markdown
from tests.tools.test_errors import assert_clean_error, cli

DOCS = Path(__file__).resolve().parents[2] / "docs" / "layers.md"


@pytest.mark.parametrize("name,expected", [
    ("InnerProduct", "inner_product"), ("HDF5Data", "hdf5_data"), ("LRN", "lrn"), ("ReLU", "re_lu"),
    ("SoftmaxWithLoss", "softmax_with_loss"), ("MVN", "mvn"), ("ELU", "elu"), ("Im2col", "im2col"),
])
def test_snake_case(name, expected):
    assert snake_case(name) == expected


def test_every_registered_type_is_listed(capsys):
    status, out, _ = cli(["layers"], capsys)
    assert status == 0
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == set(LAYER_REGISTRY)


def test_param_fields_are_derived():
    from numcaffe.layers.base import layer_class
    expect = {"InnerProduct": ["inner_product_param"], "ReLU": ["relu_param"], "LRN": ["lrn_param"],
              "Deconvolution": ["convolution_param"], "SoftmaxWithLoss": ["softmax_param", "loss_param"],
              "Split": []}
    for name, fields in expect.items():
        if name in LAYER_REGISTRY:
            assert param_fields(name, layer_class(name)) == fields, name
    if "Data" in LAYER_REGISTRY:
        assert "transform_param" in param_fields("Data", layer_class("Data"))


def test_param_fields_of_a_plugin_class():
    class Frob(Layer):
        """A layer that reads two messages."""
        param_fields = ("power_param",)

        def LayerSetUp(self, bottom, top):
            self.k = self.layer_param.exp_param.base

    assert param_fields("Frob", Frob) == ["power_param", "exp_param"]


def test_details_of_one_type(capsys):
    status, out, _ = cli(["layers", "Input"], capsys)
    assert status == 0
    assert "input_param (InputParameter):" in out and "shape: repeated BlobShape" in out


def test_unknown_type_suggests_names(capsys):
    status, _, err = cli(["layers", "Inptu"], capsys)
    assert_clean_error(status, err, "unknown layer type 'Inptu'", "'Input'")


def test_markdown_has_a_section_per_type_with_field_tables():
    md = to_markdown(describe_types())
    for name in LAYER_REGISTRY:
        assert f"\n## {name}\n" in md
    assert "| field | type | default | description |" in md
    assert "`input_param` (InputParameter):" in md


def test_docs_page_lists_exactly_the_built_in_types():
    """docs/layers.md must be regenerated when layer types are added or removed."""
    if not DOCS.exists():
        pytest.skip("docs/layers.md not generated yet")
    documented = set(re.findall(r"^## (\S+)$", DOCS.read_text(), re.M))
    built_in = {n for n, c in LAYER_REGISTRY.items() if c.__module__.startswith("numcaffe.layers.")}
    assert documented == built_in, ("docs/layers.md is stale: run `numcaffe layers --markdown -o docs/layers.md` "
                                    f"(missing {sorted(built_in - documented)}, gone {sorted(documented - built_in)})")
