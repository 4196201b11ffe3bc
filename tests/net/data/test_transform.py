"""DataTransformer against Caffe's per-item loop, and the image codec helpers."""
import io

import numpy as np
import pytest

from numcaffe.net.errors import NumcaffeError
from numcaffe.net.proto import caffe_pb2
from numcaffe.net.data.transform import DataTransformer, decode_image, encode_image, load_mean_file

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def caffe_item(x, mean, scale, h_off, w_off, crop, mirror):
    """Caffe's DataTransformer::Transform for one datum, element by element (float32 arithmetic)."""
    c, h, w = x.shape
    ch, cw = (crop, crop) if crop else (h, w)
    out = np.zeros((c, ch, cw), dtype=np.float32)
    for k in range(c):
        for y in range(ch):
            for xx in range(cw):
                src = (k, h_off + y, w_off + xx)
                dst = (k, y, cw - 1 - xx) if mirror else (k, y, xx)
                out[dst] = (np.float32(x[src]) - np.float32(mean[src])) * np.float32(scale)
    return out


def param(**kw):
    return caffe_pb2.TransformationParameter(**kw)


def replay(t, x, rng_seed):
    """The expected batch: the transformer's own draws, applied by the oracle."""
    n, c, h, w = x.shape
    mirror, h_off, w_off = t.draw(n, h, w, np.random.default_rng(rng_seed))
    mean = t.mean_for(c, h, w)
    return np.stack([caffe_item(x[i], mean, t.scale, h_off[i], w_off[i], t.crop_size, mirror[i])
                     for i in range(n)]), mirror, h_off, w_off


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
@pytest.mark.parametrize("kw", [
    dict(),
    dict(scale=0.00390625),
    dict(scale=0.5, mean_value=[100.0]),
    dict(scale=2.0, mean_value=[1.0, 50.0, 200.0], crop_size=3),
    dict(crop_size=4, mirror=True),
    dict(scale=0.1, crop_size=5, mirror=True, mean_value=[7.5]),
], ids=["identity", "scale", "mean1", "mean3-crop", "crop-mirror", "all"])
def test_transform_matches_caffe_loop(kw, phase, dtype):
    rs = np.random.RandomState(0)
    x = (rs.randint(0, 256, (6, 3, 7, 5)) if dtype == np.uint8 else rs.standard_normal((6, 3, 7, 5)) * 50)
    x = x.astype(dtype)
    t = DataTransformer(param(**kw), phase)
    got = t.transform(x, np.random.default_rng(42))
    want, mirror, h_off, w_off = replay(t, x, 42)
    assert got.dtype == np.float32
    assert got.tobytes() == want.tobytes()
    crop = kw.get("crop_size", 0)
    if crop and phase == TEST:
        assert set(h_off) == {(7 - crop) // 2} and set(w_off) == {(5 - crop) // 2}
    if not kw.get("mirror"):
        assert not mirror.any()


def test_mean_file_is_indexed_at_the_source_position(tmp_path):
    rs = np.random.RandomState(1)
    mean = rs.uniform(0, 255, (2, 6, 6)).astype(np.float32)
    bp = caffe_pb2.BlobProto(num=1, channels=2, height=6, width=6)
    bp.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(bp.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(str(path)), mean)
    x = rs.randint(0, 256, (5, 2, 6, 6)).astype(np.uint8)
    t = DataTransformer(param(mean_file="mean.binaryproto", crop_size=4, mirror=True, scale=0.5), TRAIN,
                        base_dir=str(tmp_path))
    got = t.transform(x, np.random.default_rng(3))
    want, *_ = replay(t, x, 3)
    assert got.tobytes() == want.tobytes()


def test_random_draws_cover_offsets_and_mirror():
    t = DataTransformer(param(crop_size=2, mirror=True), TRAIN)
    mirror, h_off, w_off = t.draw(2000, 5, 4, np.random.default_rng(0))
    assert set(mirror) == {0, 1}
    assert set(h_off) == {0, 1, 2, 3} and set(w_off) == {0, 1, 2}
    # mirror is random in TEST as well (Caffe's rule); crops are centred there
    t = DataTransformer(param(crop_size=2, mirror=True), TEST)
    mirror, h_off, w_off = t.draw(200, 5, 4, np.random.default_rng(0))
    assert set(mirror) == {0, 1} and set(h_off) == {1} and set(w_off) == {1}


def test_legacy_data_param_fields_apply_when_transform_param_is_silent():
    legacy = caffe_pb2.DataParameter(scale=0.5, crop_size=2)
    t = DataTransformer(param(scale=0.25), TEST, legacy=legacy)
    assert t.scale == np.float32(0.25) and t.crop_size == 2


def test_errors():
    with pytest.raises(NumcaffeError, match="both mean_file and mean_value"):
        DataTransformer(param(mean_file="m", mean_value=[1]), TRAIN)
    with pytest.raises(NumcaffeError, match="force_color and force_gray"):
        DataTransformer(param(force_color=True, force_gray=True), TRAIN)
    with pytest.raises(NumcaffeError, match="mean_file"):
        DataTransformer(param(mean_file="/nonexistent/mean.binaryproto"), TRAIN)
    t = DataTransformer(param(mean_value=[1, 2]), TRAIN)
    with pytest.raises(NumcaffeError, match="one per channel"):
        t.transform(np.zeros((1, 3, 2, 2), np.uint8), np.random.default_rng())


def test_bad_mean_file(tmp_path):
    path = tmp_path / "m.binaryproto"
    path.write_bytes(b"\x08\x96\x01garbage\xff")
    with pytest.raises(NumcaffeError, match="m.binaryproto"):
        load_mean_file(str(path))


def test_decode_gives_bgr_chw_and_encode_round_trips():
    from PIL import Image
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 255                     # pure red
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG")
    a = decode_image(buf.getvalue())
    assert a.shape == (3, 2, 3)
    assert (a[2] == 255).all() and (a[0] == 0).all()   # red is the last channel in BGR
    assert decode_image(buf.getvalue(), color=False).shape == (1, 2, 3)
    assert decode_image(buf.getvalue(), size=(4, 6)).shape == (3, 4, 6)
    rs = np.random.RandomState(2)
    img = rs.randint(0, 256, (3, 4, 5)).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(img, "png")), img)
    gray = rs.randint(0, 256, (1, 4, 5)).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(encode_image(gray, "png")), gray)   # grey stays 1 channel
    assert decode_image(encode_image(gray, "png"), color=True).shape == (3, 4, 5)


def test_decode_garbage_names_the_source():
    with pytest.raises(NumcaffeError, match="record 7: cannot decode"):
        decode_image(b"not an image", where="record 7")
