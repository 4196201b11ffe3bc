"""Write the 2-D toy set for logistic regression: two Gaussian clouds, one per class.

    python configs/logreg/make_data.py     # rewrites the files next to this script

train.h5 holds 200 points, test.h5 100 (datasets `data` (N, 2) and `label`
(N,)), listed in train.txt and test.txt.  Class 0 is centred at (-1, -1),
class 1 at (1, 1), both with standard deviation 0.8, so a straight line
separates them up to the overlap of the clouds (about 96% accuracy).  A fixed
seed makes the files the same on every run.  Needs h5py.
"""
import os

import numpy as np


def make(rs, n):
    label = rs.randint(0, 2, n)
    centre = np.where(label[:, None] == 1, 1.0, -1.0)
    data = centre + 0.8 * rs.standard_normal((n, 2))
    return data.astype(np.float32), label.astype(np.float32)


def main():
    import h5py
    here = os.path.dirname(os.path.abspath(__file__))
    rs = np.random.RandomState(2024)
    for name, n in (("train", 200), ("test", 100)):
        data, label = make(rs, n)
        with h5py.File(os.path.join(here, f"{name}.h5"), "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
        with open(os.path.join(here, f"{name}.txt"), "w") as f:
            f.write(f"{name}.h5\n")


if __name__ == "__main__":
    main()
