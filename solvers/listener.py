"""What a solver tells its listeners: the numbers its log shows, when it shows them.

A listener is any object with some of these methods (the solver calls those
it has); subclass :class:`SolverListener` to get no-ops for the rest::

    class Printer(SolverListener):
        def on_test(self, solver, test_net_id, outputs):
            print(solver.iter, test_net_id, outputs)

    solver.add_listener(Printer())

The calls happen where the solver logs, with the values it logs:

``on_display(solver, smoothed_loss, outputs, iters_per_s)``
    on a display iteration, after the ``Iteration N (X iter/s, ...), loss = L``
    line and its ``Train net output`` lines: ``outputs`` is their list of
    ``(blob name, value)`` (a blob with several elements gives several pairs
    of the same name), ``iters_per_s`` the rate the line shows.  After
    training, ``solve()``'s closing ``Iteration N, loss = L`` line calls it
    with ``outputs=[]`` and ``iters_per_s=None``.
``on_learning_rate(solver, rate)``
    with the ``Iteration N, lr = R`` line of a display iteration.
``on_test(solver, test_net_id, outputs)``
    after a test net's ``Test net output`` lines: ``outputs`` as above, the
    means over ``test_iter`` batches.  A test interrupted by a signal calls
    nothing (the resumed run repeats it).
``on_gradients_ready(solver)``
    every iteration, after the forward and backward passes and before the
    update (Caffe's ``Solver::Callback`` of the same name): the parameters'
    ``diff`` holds this iteration's gradient, summed over ``iter_size``.

In every call ``solver.iter`` is the iteration the log line names.  The
listeners run in the process that logs; a run that logs from one process only
gets one writer.  solvers/tensorboard.py is the listener behind
``numcaffe train --tensorboard``.
"""


class SolverListener:
    """A listener that ignores everything; override the calls you need (see the module doc)."""

    def on_display(self, solver, smoothed_loss, outputs, iters_per_s):
        pass

    def on_learning_rate(self, solver, rate):
        pass

    def on_test(self, solver, test_net_id, outputs):
        pass

    def on_gradients_ready(self, solver):
        pass


def notify(listeners, event, solver, *args):
    """Call ``event`` on every listener that has it."""
    for listener in listeners:
        method = getattr(listener, event, None)
        if method is not None:
            method(solver, *args)
