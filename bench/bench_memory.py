"""Peak memory of the whole LeNet job: ``numcaffe train`` against the same job written for PyTorch.

    python bench/bench_memory.py [--iters 1000]

bench_lenet.py measures the leanest possible training loop in each framework
(in-memory batches, no test net).  This measures the job as a user runs it,
each in a new process, by its peak resident memory (``ru_maxrss`` from wait4):

* numcaffe: ``numcaffe train --solver configs/lenet/lenet_solver.prototxt`` with
  ``max_iter`` cut to ``--iters`` (and no snapshots): the TRAIN net reads
  train_lmdb, the TEST net runs over all 10,000 test images every 500 iterations.
* PyTorch: the same net and solver as a PyTorch user writes it: the data set in
  memory as uint8 tensors (what torchvision's FashionMNIST holds), a DataLoader
  of batches of 64, SGD with momentum, weight decay and the inv schedule, and a
  pass over the test set every 500 iterations under ``torch.no_grad()``.

Both see the same images: the parent reads them from the LMDBs that
``numcaffe data fashion-mnist`` writes and hands PyTorch .npy files.
"""
import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LENET = os.path.join(ROOT, "configs", "lenet")
DATA = os.path.join(LENET, "data")

TORCH_JOB = r'''
import sys, numpy as np, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
d, max_iter = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(2); torch.manual_seed(1701)
train = TensorDataset(torch.from_numpy(np.load(d + "/train_x.npy")), torch.from_numpy(np.load(d + "/train_y.npy")))
test = TensorDataset(torch.from_numpy(np.load(d + "/test_x.npy")), torch.from_numpy(np.load(d + "/test_y.npy")))
model = nn.Sequential(nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
                      nn.Flatten(), nn.Linear(800, 500), nn.ReLU(inplace=True), nn.Linear(500, 10))
w = [p for n, p in model.named_parameters() if n.endswith("weight")]
b = [p for n, p in model.named_parameters() if n.endswith("bias")]
opt = torch.optim.SGD([{"params": w}, {"params": b, "lr": 0.02}], lr=0.01, momentum=0.9, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 + 1e-4 * it) ** -0.75)
loss_fn = nn.CrossEntropyLoss()

def evaluate():
    model.eval(); right = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=100):
            right += (model(x.float() / 256).argmax(1) == y).sum().item()
    model.train(); return right / len(test)

it = 0
while it < max_iter:
    for x, y in DataLoader(train, batch_size=64):
        if it % 500 == 0:
            print("iteration", it, "accuracy", evaluate(), flush=True)
        opt.zero_grad()
        loss_fn(model(x.float() / 256), y).backward()
        opt.step(); sched.step(); it += 1
        if it == max_iter:
            break
print("iteration", it, "accuracy", evaluate(), flush=True)
'''


def export_arrays(out):
    """The LMDBs' images (uint8 N×1×28×28) and labels (int64) as .npy files in ``out``."""
    import numpy as np

    from numcaffe.net.data.db import LMDB, open_reader, parse_datum
    for split in ("train", "test"):
        with open_reader(os.path.join(DATA, f"{split}_lmdb"), LMDB) as r:
            n = r.count()
            x = np.empty((n, 1, 28, 28), np.uint8)
            y = np.empty(n, np.int64)
            for i, (_, v) in enumerate(r.read(n)):
                d = parse_datum(v)
                x[i, 0] = np.frombuffer(d.data, np.uint8).reshape(28, 28)
                y[i] = d.label
        np.save(os.path.join(out, f"{split}_x.npy"), x)
        np.save(os.path.join(out, f"{split}_y.npy"), y)


def run_job(argv, cwd):
    """(peak resident MB, last output line) of a command run to its end."""
    p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{argv[:3]} failed ({p.returncode}):\n{out[-2000:]}")
    lines = [ln for ln in out.splitlines() if "accuracy" in ln]
    return usage.ru_maxrss / 1024.0, (lines[-1].strip() if lines else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=1000, help="training iterations of each job (default 1000)")
    args = ap.parse_args()
    if not os.path.isdir(os.path.join(DATA, "train_lmdb")):
        sys.exit(f"{DATA} has no train_lmdb: run `numcaffe data fashion-mnist` first")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(LENET, "lenet_solver.prototxt")) as f:
            solver = f.read()
        solver = solver.replace("max_iter: 10000", f"max_iter: {args.iters}").replace("snapshot: 5000", "snapshot: 0")
        solver = solver.replace('net: "lenet_train_test.prototxt"',
                                f'net: "{os.path.join(LENET, "lenet_train_test.prototxt")}"')
        solver += "\nsnapshot_after_train: false\n"
        path = os.path.join(tmp, "solver.prototxt")
        with open(path, "w") as f:
            f.write(solver)
        rows = [("numcaffe train", *run_job([sys.executable, "-m", "numcaffe.tools.cli", "train",
                                             "--solver", path], cwd=ROOT))]
        try:
            import torch  # noqa: F401
            have_torch = True
        except ImportError:
            have_torch = False
        if have_torch:
            export_arrays(tmp)
            job = os.path.join(tmp, "torch_job.py")
            with open(job, "w") as f:
                f.write(TORCH_JOB)
            rows.append(("PyTorch job", *run_job([sys.executable, job, tmp, str(args.iters)], cwd=tmp)))
    print(f"LeNet on Fashion-MNIST, {args.iters} iterations with a test pass every 500:")
    for name, mb, last in rows:
        print(f"  {name:15s} peak memory {mb:6.0f} MB   ({last})")
    if len(rows) == 2:
        print(f"  ratio numcaffe / PyTorch: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
