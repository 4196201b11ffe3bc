"""caffe.Detector: windows cropped (with or without context), warped, classified in batches."""
import numpy as np
import pytest
from PIL import Image

from numcaffe.net.pycaffe import Detector
from numcaffe.net.errors import NumcaffeError, ShapeError

# The "classifier" answers each window's mean colour: global average pooling of a 3 x 8 x 8 input.
NET = """name: "colour"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } } }
layer { name: "avg" type: "Pooling" bottom: "data" top: "avg" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "avg" top: "colour" }
"""

RED, GREEN, BLUE = (200, 0, 0), (0, 150, 0), (0, 0, 100)


@pytest.fixture
def scene(tmp_path):
    """A 40 x 60 RGB image: red left half, green top right, blue bottom right."""
    im = np.zeros((40, 60, 3), np.uint8)
    im[:, :30] = RED
    im[:20, 30:] = GREEN
    im[20:, 30:] = BLUE
    path = tmp_path / "scene.png"
    Image.fromarray(im).save(path)
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    return str(net), str(path)


def test_each_window_is_classified_in_order_across_batches(scene):
    net, image = scene
    det = Detector(net, None, raw_scale=255)
    windows = np.array([[0, 0, 40, 30], [0, 30, 20, 60], [20, 30, 40, 60], [5, 5, 15, 25], [25, 40, 35, 55]])
    found = det.detect_windows([(image, windows[:3]), (image, windows[3:])])
    assert [d["filename"] for d in found] == [image] * 5
    assert [tuple(d["window"]) for d in found] == [tuple(w) for w in windows]
    colours = np.array([d["prediction"] for d in found])
    np.testing.assert_allclose(colours, [RED, GREEN, BLUE, RED, BLUE], atol=0.5)   # 5 windows: batches 4 + 1


def test_preprocessing_follows_the_transformer_settings(scene):
    net, image = scene
    det = Detector(net, None, raw_scale=255, channel_swap=(2, 1, 0), mean=np.array([10.0, 20.0, 30.0]),
                   input_scale=0.5)
    (found,) = det.detect_windows([(image, [np.array([0, 0, 40, 30])])])
    # RGB red -> BGR (0, 0, 200), minus the mean, times 0.5
    np.testing.assert_allclose(found["prediction"], [(0 - 10) / 2, (0 - 20) / 2, (200 - 30) / 2], atol=0.5)


def test_context_pad_grows_the_box_and_fills_outside_with_the_mean(scene):
    net, image = scene
    mean_bgr = np.array([30.0, 60.0, 90.0])
    det = Detector(net, None, raw_scale=255, channel_swap=(2, 1, 0), mean=mean_bgr, context_pad=2)
    assert list(det.crop_dims) == [8, 8, 3]
    # the mean goes back to the unprocessed image: channel order undone (RGB) and divided by raw_scale
    np.testing.assert_allclose(det.crop_mean.reshape(-1), mean_bgr[::-1] / 255)
    im = np.asarray(Image.open(image), dtype=np.float32) / 255
    # a window in the top-left corner: its context above and left lies outside the image
    crop = det.crop(im, np.array([0, 0, 7, 7]))
    assert crop.shape == (8, 8, 3)
    # the box grows by 8 / (8 - 4) = 2 about its centre (4, 4): rows and columns -4 .. 12, of which
    # -4 .. -1 are outside; in input pixels that is 4 * 8/17 = 2 rows and columns of mean
    np.testing.assert_allclose(crop[:2, :, :], np.broadcast_to(mean_bgr[::-1] / 255, (2, 8, 3)), atol=1e-6)
    np.testing.assert_allclose(crop[:, :2, :], np.broadcast_to(mean_bgr[::-1] / 255, (8, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(crop[3:, 3:, :], np.broadcast_to(np.array(RED) / 255, (5, 5, 3)), atol=1e-6)


def test_context_pad_without_mean_pads_with_zeros(scene):
    net, image = scene
    det = Detector(net, None, context_pad=1)
    im = np.ones((40, 60, 3), np.float32)
    crop = det.crop(im, np.array([30, 50, 39, 59]))      # bottom-right corner: context below/right is outside
    assert crop.shape == (8, 8, 3)
    assert (crop[-1] == 0).all() and (crop[:, -1] == 0).all() and (crop[:6, :6] == 1).all()


def test_bad_windows_and_missing_selective_search_are_clear(scene):
    net, image = scene
    det = Detector(net, None)
    with pytest.raises(ShapeError, match="is empty"):
        det.detect_windows([(image, [np.array([10, 10, 10, 20])])])
    assert det.detect_windows([(image, [])]) == []
    with pytest.raises(NumcaffeError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search([image])
