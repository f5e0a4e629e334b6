"""ADMM for the linear SVM, data split by samples or by features, one or two levels.

DESIGN §8; the twin of ``protocol.py``: pure, jittable functions, no I/O. Binary labels
y in {-1, +1}, rows a = x~ = [x, 1]: minimize_w 1/2 ||w||^2 + C sum_i max(0, 1 - y_i w^T a_i),
what ``LinearSVC(C=C, loss="hinge", fit_intercept=False)`` fits on x~ (the bias weight is
regularized too). Multi-class: one-vs-rest, K problems (K = 1 for two classes) vmapped over
classes, each with its own rho.

Boyd, Parikh, Chu, Peleato, Eckstein (2011), "Distributed Optimization and Statistical
Learning via the Alternating Direction Method of Multipliers": scaled form §3.1.1
(3.5)-(3.7); stopping §3.3.1 (3.12); residual balancing §3.4.1 (3.13).
- Samples split: consensus with regularization (§7.1.1, §8.2): x_i = prox of worker i's
  hinge loss (a box QP, ``svm.dcd_prox_dual``), z = the regularized mean, u_i += x_i - z.
- Features split: sharing (§7.3, §8.3): a ridge x_j-update per column block, a per-sample
  hinge prox for zbar. Two levels are not provided for this split.
- Two levels (samples split): each group runs kappa warm-started consensus iterations to
  z_g, regularized by (rho_top/2) ||z_g - (z - u_g)||^2; the top runs consensus over the z_g.

Single-party functions (``x_update``, ``zbar_update``...) are for ONE worker and ONE class;
the ``*_step`` functions vmap them. Every sum over parties goes through
``aggregate(values f32[N, ...], weights f32[N])`` (default :func:`masked_sum`), which secure
aggregation can replace: what crosses is x_i + u_i and four scalars per worker (samples),
A_j x_j and five scalars per worker (features). Padding rows, columns and workers are
masked and contribute nothing.
"""

from fedf_jax.admm.consensus import *  # noqa: F403
from fedf_jax.admm.core import *  # noqa: F403
from fedf_jax.admm.sharing import *  # noqa: F403
from fedf_jax.svm import accuracy, hinge_loss, objective, ovr_targets, predict  # noqa: F401
