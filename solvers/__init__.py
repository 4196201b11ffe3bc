"""numcaffe's solvers, in pycaffe's shape.

    from numcaffe.solvers import get_solver, SGDSolver, AdamSolver
    solver = get_solver("configs/xor/solver.yaml")   # the class its `type` names
    solver.step(100); solver.solve(); solver.snapshot(); solver.restore("x_iter_100.solverstate")
    solver.net, solver.test_nets, solver.iter

Modules: solver.py (the loop, tests, snapshots, restore), sgd.py (SGD,
Nesterov and the shared update steps), adaptive.py (AdaGrad, RMSProp,
AdaDelta, Adam), lr_policy.py (learning-rate schedules), state.py (solver
state files), signals.py (Ctrl-C and SIGHUP), progress.py (the progress bar),
listener.py (what the solver tells listeners: the numbers its log shows),
tensorboard.py (the listener that writes TensorBoard event files).
The log goes through numcaffe.net.log in glog's line format.
"""
from numcaffe.solvers.solver import (SOLVER_REGISTRY, Solver, get_solver, read_solver_param,
                                     register_solver, solver_class)
from numcaffe.solvers.sgd import NesterovSolver, SGDSolver
from numcaffe.solvers.adaptive import AdaDeltaSolver, AdaGradSolver, AdamSolver, RMSPropSolver

__all__ = ["SOLVER_REGISTRY", "Solver", "get_solver", "read_solver_param", "register_solver", "solver_class",
           "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver"]
