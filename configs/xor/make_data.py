"""Write the XOR data set: xor.h5 (datasets `data` (4, 2) and `label` (4,)) and xor.txt listing it.

    python configs/xor/make_data.py        # rewrites the files next to this script

The four corners of the unit square; the label is x1 XOR x2.  Train and test
use the same four points: the lecture's question is whether the net can
represent XOR at all.  Needs h5py (pip install numcaffe[data]).
"""
import os

import numpy as np


def main():
    import h5py
    here = os.path.dirname(os.path.abspath(__file__))
    data = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    label = np.array([0, 1, 1, 0], dtype=np.float32)
    with h5py.File(os.path.join(here, "xor.h5"), "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=label)
    with open(os.path.join(here, "xor.txt"), "w") as f:
        f.write("xor.h5\n")


if __name__ == "__main__":
    main()
