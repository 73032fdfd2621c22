"""Defaults that the config and the code's keyword arguments share, each written once.

The Sinkhorn values are the paper's and the reference code's (Sec. 4.2): the ``pseudo`` section
takes them as its field defaults, and the solvers in :mod:`p2m_core.pseudo` as their keyword
defaults, so that calling a solver without arguments runs what a default config runs.
"""

from __future__ import annotations

#: ``pseudo.sinkhorn_epsilon``. Its unit depends on ``pseudo.sinkhorn_mode``: raw cost units in
#: ``reference`` mode, a fraction of the image's largest cost in ``converged`` mode
#: (:func:`p2m_core.pseudo.transport.sinkhorn` hands it to the solver of each mode by a name
#: that says which).
SINKHORN_EPSILON = 1e-3
#: ``pseudo.sinkhorn_iters``: the reference's fixed number of Sinkhorn iterations (paper Sec. 4.2).
SINKHORN_ITERS = 80
#: ``pseudo.sinkhorn_tol``: the marginal tolerance (the misplaced share of the supply) at which
#: the converged solver stops; in reference mode it only sets the ``converged`` flag.
SINKHORN_TOL = 1e-3
#: ``pseudo.sinkhorn_max_iters``: the cap on the converged solver's iterations.
SINKHORN_MAX_ITERS = 2000
