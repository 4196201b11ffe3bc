"""numcaffe's data pipeline, below the layers that read it (Caffe's util/db*, data_transformer, base_data_layer's thread).

* :mod:`~numcaffe.net.data.db`: LMDB / LevelDB databases of Datum records, and Datum <-> array;
* :mod:`~numcaffe.net.data.transform`: the DataTransformer (scale, mean, crop, mirror) and image decoding;
* :mod:`~numcaffe.net.data.prefetch`: the thread that loads batches ahead, with exact resume.

Modules are imported on use; optional packages (lmdb, plyvel, Pillow) only when a file is opened.
"""
