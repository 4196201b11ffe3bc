"""Cases for the file-backed data layers: Data, ImageData, HDF5Data, HDF5Output, MemoryData.

The layers read small files made here, at import, in a temporary directory
that is removed at exit: an LMDB (and a LevelDB when plyvel is installed) of
Datums, PNG images with a list file, and HDF5 files with a list.  The writers
used are lmdb / plyvel / Pillow / h5py themselves, not numcaffe's, so the
layers are checked against independently written files.

test_gradients runs SetUp, Forward, Backward and then Forward again before
``check_forward``, so the checks below expect the SECOND batch.
"""
import atexit
import io
import os
import shutil
import tempfile

import numpy as np

from numcaffe.net.proto import caffe_pb2
from tests.layers.gradcase import GradCase, gaussian, labels

TMP = tempfile.mkdtemp(prefix="numcaffe-data-cases-")
atexit.register(shutil.rmtree, TMP, ignore_errors=True)

# ------------------------------------------------------------------ the files

N_RECORDS = 10
RS = np.random.RandomState(20240601)
#: (N, C, H, W) uint8 pixels of the database records; label of record i is 3*i % 7
PIXELS = RS.randint(0, 256, (N_RECORDS, 2, 6, 5)).astype(np.uint8)
LABELS = np.array([3 * i % 7 for i in range(N_RECORDS)], dtype=np.float32)
FLOATS = RS.standard_normal((N_RECORDS, 3, 2, 2)).astype(np.float32)


def datum(array, label, encoded=None):
    d = caffe_pb2.Datum(channels=array.shape[0], height=array.shape[1], width=array.shape[2], label=int(label))
    if encoded is not None:
        d.data, d.encoded = encoded, True
    elif array.dtype == np.uint8:
        d.data = array.tobytes()
    else:
        d.float_data.extend(array.ravel().tolist())
    return d.SerializeToString()


def png_bytes(chw_bgr):
    """PNG of a (C, H, W) uint8 BGR array (Pillow wants RGB, HWC)."""
    from PIL import Image
    a = chw_bgr
    img = Image.fromarray(a[::-1].transpose(1, 2, 0), "RGB") if a.shape[0] == 3 else Image.fromarray(a[0], "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_lmdb(path, values):
    import lmdb
    env = lmdb.open(path, map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(b"%08d" % i, v)
    env.close()
    return path


def write_leveldb(path, values):
    import plyvel
    db = plyvel.DB(path, create_if_missing=True)
    for i, v in enumerate(values):
        db.put(b"%08d" % i, v)
    db.close()
    return path


def write_mean(path, mean):
    c, h, w = mean.shape
    bp = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    bp.data.extend(mean.ravel().tolist())
    with open(path, "wb") as f:
        f.write(bp.SerializeToString())
    return path


UINT8_DB = write_lmdb(os.path.join(TMP, "uint8_lmdb"), [datum(PIXELS[i], LABELS[i]) for i in range(N_RECORDS)])
FLOAT_DB = write_lmdb(os.path.join(TMP, "float_lmdb"), [datum(FLOATS[i], LABELS[i]) for i in range(N_RECORDS)])
COLOR = RS.randint(0, 256, (N_RECORDS, 3, 5, 4)).astype(np.uint8)
ENCODED_DB = write_lmdb(os.path.join(TMP, "encoded_lmdb"),
                        [datum(COLOR[i], LABELS[i], png_bytes(COLOR[i])) for i in range(N_RECORDS)])
MEAN = RS.uniform(0, 255, (2, 6, 5)).astype(np.float32)
MEAN_FILE = write_mean(os.path.join(TMP, "mean.binaryproto"), MEAN)
try:
    LEVEL_DB = write_leveldb(os.path.join(TMP, "uint8_leveldb"),
                             [datum(PIXELS[i], LABELS[i]) for i in range(N_RECORDS)])
except ImportError:
    LEVEL_DB = None

# images: 7 colour PNGs of 6x8 (and one list naming them with a space in a path)
N_IMAGES = 7
IMAGES = RS.randint(0, 256, (N_IMAGES, 3, 6, 8)).astype(np.uint8)
IMAGE_LABELS = np.arange(N_IMAGES, dtype=np.float32) * 2 + 1
IMAGE_DIR = os.path.join(TMP, "images dir")
os.makedirs(IMAGE_DIR)
for _i in range(N_IMAGES):
    with open(os.path.join(IMAGE_DIR, f"img {_i}.png"), "wb") as _f:
        _f.write(png_bytes(IMAGES[_i]))
IMAGE_LIST = os.path.join(TMP, "images.txt")
with open(IMAGE_LIST, "w") as _f:
    _f.writelines(f"img {i}.png {int(IMAGE_LABELS[i])}\n" for i in range(N_IMAGES))
IMAGE_ROOT = IMAGE_DIR + "/"

# HDF5: two files of 5 and 3 rows, datasets "data" (n, 2, 3) and "label" (n,)
H5_ROWS = (5, 3)
H5_DATA = [RS.standard_normal((n, 2, 3)).astype(np.float32) for n in H5_ROWS]
H5_LABEL = [np.arange(n, dtype=np.float64) + 10 * k for k, n in enumerate(H5_ROWS)]
H5_LIST = os.path.join(TMP, "h5_list.txt")


def _write_h5():
    import h5py
    names = []
    for k in range(len(H5_ROWS)):
        name = os.path.join(TMP, f"part{k}.h5")
        with h5py.File(name, "w") as f:
            f["data"] = H5_DATA[k]
            f["label"] = H5_LABEL[k]
        names.append(name)
    with open(H5_LIST, "w") as f:
        f.write("\n".join(names) + "\n")


_write_h5()
H5_ALL_DATA = np.concatenate(H5_DATA)
H5_ALL_LABEL = np.concatenate(H5_LABEL).astype(np.float32)
H5_OUT = os.path.join(TMP, "out.h5")

# a window file over one 8x10 colour image: two foreground windows (overlap >= 0.7), one background
# window, and one at overlap 0.6 (neither, with fg_threshold 0.7; foreground class 1 at the default 0.5)
WINDOW_IMAGE = RS.randint(0, 256, (3, 8, 10)).astype(np.uint8)
with open(os.path.join(TMP, "window.png"), "wb") as _f:
    _f.write(png_bytes(WINDOW_IMAGE))
WINDOWS = {2: (1, 2, 4, 5), 3: (5, 1, 8, 4), 0: (0, 0, 3, 3)}   # label -> inclusive box x1 y1 x2 y2
WINDOW_FILE = os.path.join(TMP, "windows.txt")
with open(WINDOW_FILE, "w") as _f:
    _f.write(f"# 0\n{os.path.join(TMP, 'window.png')}\n3\n8\n10\n4\n"
             "2 0.8 1 2 4 5\n3 0.9 5 1 8 4\n1 0.1 0 0 3 3\n1 0.6 0 0 9 7\n")

# ------------------------------------------------------------------ oracles


def caffe_transform(x, mean, scale, h_off, w_off, crop, mirror):
    """One item, written out as Caffe's DataTransformer loop reads (float32 arithmetic)."""
    c, h, w = x.shape
    ch, cw = (crop, crop) if crop else (h, w)
    out = np.empty((c, ch, cw), dtype=np.float32)
    for y in range(ch):
        for xx in range(cw):
            src_x = w_off + (cw - 1 - xx if mirror else xx)
            out[:, y, xx] = (x[:, h_off + y, src_x].astype(np.float32) - mean[:, h_off + y, src_x]) * \
                np.float32(scale)
    return out


def matches_some_crop(item, x, mean, scale, crop, mirror_allowed):
    """Whether ``item`` is one of the crops (and mirrors) of ``x`` the transformer may draw."""
    c, h, w = x.shape
    for mirror in ((False, True) if mirror_allowed else (False,)):
        for ho in range(h - crop + 1):
            for wo in range(w - crop + 1):
                if np.array_equal(caffe_transform(x, mean, scale, ho, wo, crop, mirror), item):
                    return True
    return False


def _data_plain(b, t, layer):
    idx = [(4 + i) % N_RECORDS for i in range(4)]
    zero = np.zeros((2, 6, 5), np.float32)
    want = np.stack([caffe_transform(PIXELS[i], zero, 0.5, 0, 0, 0, False) for i in idx])
    np.testing.assert_array_equal(t[0], want)
    np.testing.assert_array_equal(t[1], LABELS[idx])


def _data_wraps(b, t, layer):
    # batch 6 of 10 records: the second batch is records 6..9 then 0, 1
    idx = [6, 7, 8, 9, 0, 1]
    np.testing.assert_array_equal(t[0], PIXELS[idx].astype(np.float32))
    assert len(t) == 1


def _data_crop_mirror(b, t, layer):
    mean = np.broadcast_to(np.array([10.0, 200.0], np.float32)[:, None, None], (2, 6, 5))
    assert t[0].shape == (4, 2, 3, 3)
    for i in range(4):
        r = (4 + i) % N_RECORDS
        assert matches_some_crop(t[0][i], PIXELS[r], mean, 0.25, 3, True), f"item {i}"
    np.testing.assert_array_equal(t[1], LABELS[[4, 5, 6, 7]])


def _data_test_mean_file(b, t, layer):
    idx = [3, 4, 5]
    want = np.stack([caffe_transform(PIXELS[i], MEAN, 0.1, (6 - 4) // 2, (5 - 4) // 2, 4, False) for i in idx])
    np.testing.assert_array_equal(t[0], want)


def _data_float(b, t, layer):
    idx = [(5 + i) % N_RECORDS for i in range(5)]
    np.testing.assert_array_equal(t[0], FLOATS[idx] * np.float32(2.0))
    np.testing.assert_array_equal(t[1], LABELS[idx])


def _data_encoded(b, t, layer):
    idx = [3, 4, 5]
    np.testing.assert_array_equal(t[0], COLOR[idx].astype(np.float32))


def _data_encoded_gray(b, t, layer):
    # Pillow's RGB->L: L = (R*299 + G*587 + B*114) / 1000, rounded
    idx = [3, 4, 5]
    bgr = COLOR[idx].astype(np.float64)
    luma = (bgr[:, 2] * 299 + bgr[:, 1] * 587 + bgr[:, 0] * 114) / 1000
    assert t[0].shape == (3, 1, 5, 4)
    assert np.abs(t[0][:, 0] - luma).max() <= 1.0


def _image_plain(b, t, layer):
    idx = [3, 4, 5]
    np.testing.assert_array_equal(t[0], IMAGES[idx].astype(np.float32))
    np.testing.assert_array_equal(t[1], IMAGE_LABELS[idx])


def _image_resize_gray(b, t, layer):
    assert t[0].shape == (4, 1, 3, 4)
    np.testing.assert_array_equal(t[1], IMAGE_LABELS[[4, 5, 6, 0]])
    assert np.all((t[0] >= 0) & (t[0] <= 255))


def _image_shuffle_crop(b, t, layer):
    # 5 items of the second batch: 2 from the first epoch's order, 3 from a reshuffled one
    assert t[0].shape == (5, 3, 4, 4)
    for item, label in zip(t[0], t[1]):
        k = int(np.flatnonzero(IMAGE_LABELS == label)[0])
        assert matches_some_crop(item, IMAGES[k], np.zeros((3, 6, 8), np.float32), 1.0, 4, True)


def _h5_plain(b, t, layer):
    # batch 3 over 5 + 3 rows: the second batch is rows 3, 4 of file 0 and row 0 of file 1
    np.testing.assert_array_equal(t[0], H5_ALL_DATA[[3, 4, 5]])
    np.testing.assert_array_equal(t[1], H5_ALL_LABEL[[3, 4, 5]])


def _h5_shuffle(b, t, layer):
    assert t[0].shape == (4, 2, 3) and t[1].shape == (4,)
    for row, label in zip(t[0], t[1]):
        k = int(np.flatnonzero(H5_ALL_LABEL == label)[0])
        np.testing.assert_array_equal(row, H5_ALL_DATA[k])


def _h5_output(b, t, layer):
    import h5py
    with h5py.File(H5_OUT, "r") as f:
        data, label = f["data"][...], f["label"][...]
    # two forward passes were run: the rows of both, in order
    np.testing.assert_array_equal(data, np.concatenate([b[0], b[0]]))
    np.testing.assert_array_equal(label, np.concatenate([b[1], b[1]]))


def _window_warp(b, t, layer):
    # batch 4, fg_fraction 0.5: two background windows (label 0) then two foreground ones;
    # 4x4 windows warped to crop 4 are the pixels themselves, possibly mirrored
    labels = t[1]
    assert list(labels[:2]) == [0, 0] and set(labels[2:]) <= {2, 3}
    mean = np.array([10, 20, 30], np.float32)[:, None, None]
    for item, label in zip(t[0], labels):
        x1, y1, x2, y2 = WINDOWS[int(label)]
        region = (WINDOW_IMAGE[:, y1:y2 + 1, x1:x2 + 1].astype(np.float32) - mean) * np.float32(0.5)
        assert np.array_equal(item, region) or np.array_equal(item, region[:, :, ::-1])


def _window_context(b, t, layer):
    assert t[0].shape == (3, 3, 6, 6)
    assert t[1][0] == 0 and set(t[1][1:]) <= {1, 2, 3}
    assert np.isfinite(t[0]).all() and np.abs(t[0]).sum() > 0


MEMORY_DATA = np.arange(6 * 2 * 2 * 3, dtype=np.float32).reshape(6, 2, 2, 3)
MEMORY_LABELS = np.arange(6, dtype=np.float32) + 100


class MemoryCase(GradCase):
    """A MemoryData case: arrays are handed to the layer (reset) before the net would run it."""

    def build(self):
        layer, bottom, top = super().build()
        layer.reset(MEMORY_DATA, MEMORY_LABELS)
        return layer, bottom, top


def _memory(b, t, layer):
    np.testing.assert_array_equal(t[0], MEMORY_DATA[2:4])
    np.testing.assert_array_equal(t[1], MEMORY_LABELS[2:4])


def _data(source, param, tops=('top: "data" top: "label"'), transform="", backend="LMDB"):
    return (f'type: "Data" {tops} {transform} '
            f'data_param {{ source: "{source}" backend: {backend} {param} }}')


CASES = {
    "Data": [
        GradCase(_data(UINT8_DB, "batch_size: 4", transform="transform_param { scale: 0.5 }"), [],
                 num_top=2, no_gradient=True, check_forward=_data_plain, id="scale"),
        GradCase(_data(UINT8_DB, "batch_size: 6", tops='top: "data"'), [], num_top=1, no_gradient=True,
                 check_forward=_data_wraps, id="one-top-wraps"),
        GradCase(_data(UINT8_DB, "batch_size: 4", transform='transform_param { scale: 0.25 crop_size: 3 '
                       'mirror: true mean_value: 10 mean_value: 200 }'), [], num_top=2, no_gradient=True,
                 check_forward=_data_crop_mirror, id="train-crop-mirror-mean-values"),
        GradCase(_data(UINT8_DB, "batch_size: 3", transform=f'transform_param {{ scale: 0.1 crop_size: 4 '
                       f'mean_file: "{MEAN_FILE}" }}'), [], num_top=2, no_gradient=True,
                 phase=caffe_pb2.TEST, check_forward=_data_test_mean_file, id="test-centre-crop-mean-file"),
        GradCase(_data(FLOAT_DB, "batch_size: 5", transform="transform_param { scale: 2 }"), [], num_top=2,
                 no_gradient=True, check_forward=_data_float, id="float-data"),
        GradCase(_data(ENCODED_DB, "batch_size: 3"), [], num_top=2, no_gradient=True,
                 check_forward=_data_encoded, id="encoded-png"),
        GradCase(_data(ENCODED_DB, "batch_size: 3", transform="transform_param { force_gray: true }"), [],
                 num_top=2, no_gradient=True, check_forward=_data_encoded_gray, id="encoded-force-gray"),
    ] + ([
        GradCase(_data(LEVEL_DB, "batch_size: 4", transform="transform_param { scale: 0.5 }",
                       backend="LEVELDB"), [], num_top=2, no_gradient=True, check_forward=_data_plain,
                 id="leveldb"),
    ] if LEVEL_DB else []),
    "ImageData": [
        GradCase(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{IMAGE_LIST}" '
                 f'root_folder: "{IMAGE_ROOT}" batch_size: 3 }}', [], num_top=2, no_gradient=True,
                 check_forward=_image_plain, id="plain"),
        GradCase(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{IMAGE_LIST}" '
                 f'root_folder: "{IMAGE_ROOT}" batch_size: 4 new_height: 3 new_width: 4 is_color: false }}',
                 [], num_top=2, no_gradient=True, check_forward=_image_resize_gray, id="resize-gray-wraps"),
        GradCase(f'type: "ImageData" top: "data" top: "label" transform_param {{ crop_size: 4 mirror: true }} '
                 f'image_data_param {{ source: "{IMAGE_LIST}" root_folder: "{IMAGE_ROOT}" batch_size: 5 '
                 f'shuffle: true }}', [], num_top=2, no_gradient=True, check_forward=_image_shuffle_crop,
                 id="shuffle-crop-mirror"),
    ],
    "HDF5Data": [
        GradCase(f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{H5_LIST}" '
                 f'batch_size: 3 }}', [], num_top=2, no_gradient=True, check_forward=_h5_plain,
                 id="across-files"),
        GradCase(f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{H5_LIST}" '
                 f'batch_size: 4 shuffle: true }}', [], num_top=2, no_gradient=True,
                 check_forward=_h5_shuffle, id="shuffle"),
    ],
    "HDF5Output": [
        GradCase(f'type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param {{ '
                 f'file_name: "{H5_OUT}" }}', [gaussian((3, 2, 2, 2)), labels((3,), 4)], num_top=0,
                 no_gradient=True, check_forward=_h5_output, id="appends"),
    ],
    "WindowData": [
        GradCase(f'type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: 4 mirror: true '
                 f'mean_value: 10 mean_value: 20 mean_value: 30 }} window_data_param {{ source: "{WINDOW_FILE}" '
                 f'batch_size: 4 fg_fraction: 0.5 scale: 0.5 fg_threshold: 0.7 }}', [], num_top=2, no_gradient=True,
                 check_forward=_window_warp, id="warp-mirror"),
        GradCase(f'type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: 6 }} '
                 f'window_data_param {{ source: "{WINDOW_FILE}" batch_size: 3 fg_fraction: 0.67 context_pad: 1 '
                 f'crop_mode: "square" cache_images: true }}', [], num_top=2, no_gradient=True,
                 check_forward=_window_context, id="context-square"),
    ],
    "MemoryData": [
        MemoryCase('type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 '
                   'channels: 2 height: 2 width: 3 }', [], num_top=2, no_gradient=True,
                   check_forward=_memory, id="arrays"),
    ],
}
