"""Data layers: order, exact resume across the prefetch thread, errors, threads, nets.

The files are the small ones tests/layers/cases_data.py writes.
"""
import gc
import json
import os
import shutil
import threading

import numpy as np
import pytest
from google.protobuf import text_format

import numcaffe.layers  # noqa: F401
from numcaffe.layers.base import create_layer
from numcaffe.net.blob import Blob
from numcaffe.net.errors import NumcaffeError
from numcaffe.net.proto import caffe_pb2
from tests.layers import cases_data as cd

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make(text, phase=TRAIN, seed=0, base_dir=None):
    p = caffe_pb2.LayerParameter()
    text_format.Parse(text, p)
    p.name = p.name or "data"
    p.phase = phase
    layer = create_layer(p)
    layer.rng = np.random.Generator(np.random.PCG64(seed))
    layer.base_dir = base_dir
    top = [Blob() for _ in p.top]
    layer.SetUp([], top)
    return layer, top


def batches(layer, top, m):
    out = []
    for _ in range(m):
        layer.Forward([], top)
        out.append([t.data.copy() for t in top])
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert u.shape == v.shape
            assert u.tobytes() == v.tobytes()  # bitwise


DATA_RANDOM = cd._data(cd.UINT8_DB, "batch_size: 3", transform='transform_param { scale: 0.5 crop_size: 4 '
                       'mirror: true mean_value: 3 }')
IMAGE_RANDOM = (f'type: "ImageData" top: "data" top: "label" transform_param {{ crop_size: 5 mirror: true }} '
                f'image_data_param {{ source: "{cd.IMAGE_LIST}" root_folder: "{cd.IMAGE_ROOT}" batch_size: 3 '
                f'shuffle: true }}')
WINDOW_RANDOM = (f'type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: 5 mirror: true }} '
                 f'window_data_param {{ source: "{cd.WINDOW_FILE}" batch_size: 4 fg_fraction: 0.5 context_pad: 1 }}')
H5_SHUFFLE = (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{cd.H5_LIST}" '
              f'batch_size: 3 shuffle: true }}')


# ------------------------------------------------------------------ order


def test_data_reads_in_key_order_and_wraps():
    layer, top = make(cd._data(cd.UINT8_DB, "batch_size: 4"))
    got = batches(layer, top, 5)   # 20 records from 10: two full passes
    labels = np.concatenate([b[1] for b in got])
    np.testing.assert_array_equal(labels, np.tile(cd.LABELS, 2))
    data = np.concatenate([b[0] for b in got])
    np.testing.assert_array_equal(data, np.tile(cd.PIXELS, (2, 1, 1, 1)).astype(np.float32))
    layer.close()


def test_image_data_shuffle_visits_every_image_once_per_epoch():
    text = (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{cd.IMAGE_LIST}" '
            f'root_folder: "{cd.IMAGE_ROOT}" batch_size: 7 shuffle: true }}')
    layer, top = make(text, seed=3)
    epochs = [b[1] for b in batches(layer, top, 3)]
    for e in epochs:
        assert sorted(e) == sorted(cd.IMAGE_LABELS)
    assert any(not np.array_equal(e, cd.IMAGE_LABELS) for e in epochs)      # shuffled
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:])       # reshuffled per epoch
    layer.close()


def test_image_data_logs_caffes_setup_lines(capsys):
    text = (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{cd.IMAGE_LIST}" '
            f'root_folder: "{cd.IMAGE_ROOT}" batch_size: 7 shuffle: true }}')
    capsys.readouterr()
    layer, top = make(text, seed=3)
    err = capsys.readouterr().err
    layer.close()
    lines = [ln.split("] ", 1)[1] for ln in err.splitlines() if "] " in ln]
    assert lines[:3] == [f"Opening file {cd.IMAGE_LIST}", "Shuffling data", f"A total of {len(cd.IMAGE_LABELS)} images."]
    assert f"output data size: 7,{top[0].shape[1]},{top[0].shape[2]},{top[0].shape[3]}" in lines


def test_hdf5_shuffle_covers_all_rows_per_pass():
    text = (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{cd.H5_LIST}" '
            f'batch_size: 8 shuffle: true }}')
    layer, top = make(text, seed=5)
    for data, label in batches(layer, top, 3):
        assert sorted(label) == sorted(cd.H5_ALL_LABEL)
        for row, l in zip(data, label):
            np.testing.assert_array_equal(row, cd.H5_ALL_DATA[int(np.flatnonzero(cd.H5_ALL_LABEL == l)[0])])
    layer.close()


def test_same_seed_same_batches():
    a, ta = make(DATA_RANDOM, seed=11)
    b, tb = make(DATA_RANDOM, seed=11)
    assert_same(batches(a, ta, 4), batches(b, tb, 4))
    c, tc = make(DATA_RANDOM, seed=12)
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(batches(a, ta, 4), batches(c, tc, 4)))
    for l in (a, b, c):
        l.close()


def test_rand_skip_starts_within_the_skip():
    layer, top = make(cd._data(cd.UINT8_DB, "batch_size: 1 rand_skip: 5"), seed=2)
    (data, label), = batches(layer, top, 1)
    first = int(np.flatnonzero(cd.LABELS == label[0])[0])
    assert 0 <= first < 5
    layer.close()


# ------------------------------------------------------------------ exact resume


@pytest.mark.parametrize("text", [DATA_RANDOM, IMAGE_RANDOM, H5_SHUFFLE, WINDOW_RANDOM],
                         ids=["Data", "ImageData", "HDF5Data", "WindowData"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_resume_is_exact(text, k):
    m = 5
    a, ta = make(text, seed=7)
    batches(a, ta, k)
    state = json.loads(json.dumps(a.get_state()))      # what a snapshot stores
    expected = batches(a, ta, m)
    b, tb = make(text, seed=99)                          # another seed: the state must override it
    b.set_state(state)
    assert_same(batches(b, tb, m), expected)
    a.set_state(state)                                   # rewinding a running layer too
    assert_same(batches(a, ta, m), expected)
    a.close()
    b.close()


def test_state_ignores_read_ahead():
    """The state names the next batch consumed, whatever the prefetch thread has read."""
    shallow = DATA_RANDOM.replace("batch_size: 3", "batch_size: 3 prefetch: 1")
    deep = DATA_RANDOM.replace("batch_size: 3", "batch_size: 3 prefetch: 8")
    a, ta = make(deep, seed=4)
    b, tb = make(shallow, seed=4)
    assert a.prefetcher.depth == 8 and b.prefetcher.depth == 1
    batches(a, ta, 2)
    batches(b, tb, 2)
    import time
    time.sleep(0.2)                                      # ... and a's thread has had time to run ahead
    assert a.get_state() == b.get_state()
    a.close()
    b.close()


def test_state_before_any_forward_resumes_from_setup():
    a, ta = make(IMAGE_RANDOM, seed=1)
    state = a.get_state()
    expected = batches(a, ta, 3)
    b, tb = make(IMAGE_RANDOM, seed=2)
    b.set_state(state)
    assert_same(batches(b, tb, 3), expected)
    a.close()
    b.close()


# ------------------------------------------------------------------ threads


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("prefetch ")]


def test_prefetch_thread_is_a_daemon_and_stops_on_close():
    layer, top = make(DATA_RANDOM)
    batches(layer, top, 1)
    thread = layer.prefetcher._thread
    assert thread.is_alive() and thread.daemon
    layer.close()
    assert not thread.is_alive()
    layer.close()  # twice is fine


def test_dropping_the_layer_stops_its_thread():
    layer, top = make(DATA_RANDOM)
    batches(layer, top, 1)
    thread = layer.prefetcher._thread
    del layer
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_set_state_stops_the_thread_until_the_next_forward():
    layer, top = make(DATA_RANDOM)
    batches(layer, top, 2)
    thread = layer.prefetcher._thread
    layer.set_state(layer.get_state())
    assert not thread.is_alive() and layer.prefetcher._thread is None
    batches(layer, top, 1)
    assert layer.prefetcher._thread.is_alive()
    layer.close()


# ------------------------------------------------------------------ paths


def test_relative_source_resolves_in_cwd_then_next_to_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = os.path.dirname(cd.UINT8_DB)
    layer, top = make(cd._data("uint8_lmdb", "batch_size: 10"), base_dir=base)
    np.testing.assert_array_equal(batches(layer, top, 1)[0][1], cd.LABELS)
    layer.close()
    # a database of that name in the working directory wins, as in Caffe
    shutil.copytree(cd.FLOAT_DB, tmp_path / "uint8_lmdb")
    layer, top = make(cd._data("uint8_lmdb", "batch_size: 10"), base_dir=base)
    assert top[0].shape == (10, 3, 2, 2)
    layer.close()


# ------------------------------------------------------------------ errors


def _error(text, phase=TRAIN, forward=False, base_dir=None):
    with pytest.raises(NumcaffeError) as e:
        layer, top = make(text, phase, base_dir=base_dir)
        if forward:
            batches(layer, top, 1)
    return str(e.value)


def test_missing_source_names_the_path():
    msg = _error(cd._data("/nonexistent/db", "batch_size: 2"))
    assert "/nonexistent/db" in msg and "does not exist" in msg


def test_default_leveldb_backend_on_an_lmdb_gives_a_hint():
    msg = _error(f'type: "Data" top: "data" data_param {{ source: "{cd.UINT8_DB}" batch_size: 2 }}')
    assert "LMDB" in msg and "backend: LMDB" in msg


def test_bad_parameters():
    assert "batch_size" in _error(cd._data(cd.UINT8_DB, ""))
    assert "crop_size 7" in _error(cd._data(cd.UINT8_DB, "batch_size: 2",
                                            transform="transform_param { crop_size: 7 }"))
    assert "mean file" in _error(cd._data(cd.FLOAT_DB, "batch_size: 2",
                                          transform=f'transform_param {{ mean_file: "{cd.MEAN_FILE}" }}'))
    assert "mean_value" in _error(cd._data(cd.FLOAT_DB, "batch_size: 2",
                                           transform="transform_param { mean_value: 1 mean_value: 2 }"))
    assert "new_height and new_width" in _error(
        f'type: "ImageData" top: "d" top: "l" image_data_param {{ source: "{cd.IMAGE_LIST}" '
        f'batch_size: 1 new_height: 4 }}')


def test_corrupt_record_fails_with_its_key(tmp_path):
    db = cd.write_lmdb(str(tmp_path / "db"), [cd.datum(cd.PIXELS[0], 1), b"\xff\xff\xff not a datum"])
    msg = _error(cd._data(db, "batch_size: 2"), forward=True)
    assert "Datum" in msg and "00000001" in msg


def test_image_list_errors(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("a.png 1\nb.png x\n")
    msg = _error(f'type: "ImageData" top: "d" top: "l" image_data_param {{ source: "{bad}" batch_size: 1 }}')
    assert f"{bad}:2" in msg
    missing = tmp_path / "list2.txt"
    missing.write_text("nope.png 1\n")
    msg = _error(f'type: "ImageData" top: "d" top: "l" image_data_param {{ source: "{missing}" batch_size: 1 }}')
    assert "nope.png" in msg


def test_hdf5_missing_dataset_lists_the_file_datasets():
    msg = _error(f'type: "HDF5Data" top: "pixels" hdf5_data_param {{ source: "{cd.H5_LIST}" batch_size: 1 }}')
    assert "'pixels'" in msg and "'data'" in msg and "'label'" in msg


# ------------------------------------------------------------------ MemoryData, HDF5Output


MEMORY = ('type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 2 '
          'height: 2 width: 3 }')


def test_memory_data_cycles_and_resumes():
    layer, top = make(MEMORY)
    with pytest.raises(NumcaffeError, match="reset"):
        layer.Forward([], top)
    layer.reset(cd.MEMORY_DATA, cd.MEMORY_LABELS.reshape(6, 1, 1, 1))
    got = batches(layer, top, 4)
    np.testing.assert_array_equal(got[3][0], cd.MEMORY_DATA[0:2])
    np.testing.assert_array_equal(got[1][1], cd.MEMORY_LABELS[2:4])
    state = layer.get_state()
    nxt = batches(layer, top, 1)
    layer.set_state(state)
    assert_same(batches(layer, top, 1), nxt)


def test_memory_data_rejects_bad_arrays():
    layer, top = make(MEMORY)
    with pytest.raises(NumcaffeError, match="multiple of batch_size"):
        layer.reset(cd.MEMORY_DATA[:5], cd.MEMORY_LABELS[:5])
    with pytest.raises(NumcaffeError, match=r"\(N, 2, 2, 3\)"):
        layer.reset(np.zeros((6, 2, 3, 2)), cd.MEMORY_LABELS)
    with pytest.raises(NumcaffeError, match="labels"):
        layer.reset(cd.MEMORY_DATA, cd.MEMORY_LABELS[:4])


def test_hdf5_output_truncates_at_setup_and_appends(tmp_path):
    import h5py
    out = tmp_path / "o.h5"
    with h5py.File(out, "w") as f:
        f["junk"] = np.zeros(3)
    p = caffe_pb2.LayerParameter()
    text_format.Parse(f'name: "o" type: "HDF5Output" bottom: "a" bottom: "b" '
                      f'hdf5_output_param {{ file_name: "{out}" }}', p)
    layer = create_layer(p)
    a, b = Blob((2, 3)), Blob((2,))
    layer.SetUp([a, b], [])
    with h5py.File(out, "r") as f:
        assert list(f.keys()) == []
    for k in range(3):
        a.data[...] = k
        b.data[...] = [k, -k]
        layer.Forward([a, b], [])
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["data"][...], np.repeat([0, 1, 2], 2)[:, None] * np.ones((6, 3)))
        np.testing.assert_array_equal(f["label"][...], [0, 0, 1, -1, 2, -2])


# ------------------------------------------------------------------ in a net


def _net_file(tmp_path, layers):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\n' + layers)
    return str(path)


def test_net_with_data_layers_resumes_exactly(tmp_path):
    from numcaffe.net.net import Net
    shutil.copytree(cd.UINT8_DB, tmp_path / "train_lmdb")
    model = _net_file(tmp_path, 'layer { name: "d" type: "Data" top: "data" top: "label" '
                                'transform_param { crop_size: 3 mirror: true } '
                                'data_param { source: "train_lmdb" batch_size: 4 backend: LMDB } }\n')
    a = Net(model, TRAIN)        # source relative to the net file's directory
    for _ in range(2):
        a.forward()
    state = json.loads(json.dumps(a.get_state()))
    want = [dict((k, v.copy()) for k, v in a.forward().items()) for _ in range(3)]
    b = Net(model, TRAIN)
    b.set_state(state)
    for w in want:
        got = b.forward()
        for k in w:
            assert got[k].tobytes() == w[k].tobytes()


def test_net_set_input_arrays(tmp_path):
    from numcaffe.net.net import Net
    model = _net_file(tmp_path, f"layer {{ name: \"m\" {MEMORY} }}\n")
    net = Net(model, TEST)
    net.set_input_arrays(cd.MEMORY_DATA, cd.MEMORY_LABELS)
    out = net.forward()
    np.testing.assert_array_equal(out["data"], cd.MEMORY_DATA[:2])
    np.testing.assert_array_equal(out["label"], cd.MEMORY_LABELS[:2])


def test_missing_optional_package_names_the_extra(monkeypatch):
    import sys
    from numcaffe.net.data import db as dbmod
    monkeypatch.setitem(sys.modules, "lmdb", None)    # import lmdb -> ImportError
    with pytest.raises(NumcaffeError, match=r"numcaffe\[data\]"):
        dbmod.open_reader(cd.UINT8_DB, "lmdb")
    monkeypatch.setitem(sys.modules, "h5py", None)
    msg = _error(H5_SHUFFLE)
    assert "'h5py'" in msg and "numcaffe[data]" in msg


def test_image_paths_resolve_next_to_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = os.path.dirname(cd.IMAGE_LIST)
    text = (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "images.txt" '
            f'root_folder: "images dir/" batch_size: 7 }}')
    layer, top = make(text, base_dir=base)
    (data, label), = batches(layer, top, 1)
    np.testing.assert_array_equal(data, cd.IMAGES.astype(np.float32))
    layer.close()


def test_window_geometry_matches_caffe_by_hand():
    from numcaffe.layers.window_data import warp_geometry
    # 4x4 box in the corner, 1 pixel of context in a 6x6 crop: the region grows to 7x7 from (-1, -1),
    # is clipped to 6x6 and warped to 5x5, one pixel in from the top-left (right with mirror)
    assert warp_geometry((0, 0, 3, 3), 8, 10, 6, 1, False, False) == ((0, 0, 5, 5), (5, 5), (1, 1))
    assert warp_geometry((0, 0, 3, 3), 8, 10, 6, 1, False, True) == ((0, 0, 5, 5), (5, 5), (1, 0))
    # square mode widens a 4x6 box to 7x7 around its centre
    assert warp_geometry((1, 2, 4, 7), 10, 10, 6, 0, True, False) == ((0, 2, 6, 8), (6, 6), (0, 0))
    # plain warp: the box itself, to crop x crop
    assert warp_geometry((1, 2, 4, 7), 10, 10, 6, 0, False, False) == ((1, 2, 4, 7), (6, 6), (0, 0))


def test_window_file_errors(tmp_path):
    from numcaffe.layers.window_data import read_window_file
    f = tmp_path / "w.txt"
    f.write_text("# 0\nimg.png\n3\n8\n10\n2\n2 0.8 1 2 4 5\n")
    with pytest.raises(NumcaffeError, match="ends inside"):
        read_window_file(str(f), 0.5, 0.5)
    f.write_text("# 0\nimg.png\n3\n8\n10\n1\n0 0.8 1 2 4 5\n")
    with pytest.raises(NumcaffeError, match="classes must be > 0"):
        read_window_file(str(f), 0.5, 0.5)
    f.write_text("0\nimg.png\n")
    with pytest.raises(NumcaffeError, match="expected '#'"):
        read_window_file(str(f), 0.5, 0.5)
