"""One seed for everything random in numcaffe.

Caffe keeps a single process-wide generator seeded from the solver's
``random_seed``.  numcaffe keeps a root :class:`numpy.random.SeedSequence`
instead and hands every consumer (the fillers of a net, each dropout or data
layer) its own child generator.  Children are spawned in a deterministic order,
so one seed reproduces a whole run, and each generator's state can be saved and
restored on its own, which is what makes resume exact.
"""
import numpy as np

_root = np.random.SeedSequence()


def set_random_seed(seed):
    """Reseed the root sequence; ``seed < 0`` or ``None`` draws fresh entropy."""
    global _root
    _root = np.random.SeedSequence(None if seed is None or seed < 0 else int(seed))


def new_generator():
    """A fresh generator, the next child of the root sequence."""
    return np.random.Generator(np.random.PCG64(_root.spawn(1)[0]))


def generator_state(gen):
    """The JSON-serialisable state of ``gen``."""
    return gen.bit_generator.state


def set_generator_state(gen, state):
    gen.bit_generator.state = state
