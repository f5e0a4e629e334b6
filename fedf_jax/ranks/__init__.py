"""The roles of an MPI run (``fedf train``): what each rank does, per algorithm.

DESIGN §5 and §8. Every role talks through ``backends.mpi.link.Link`` (deadlines,
named silent ranks) and frames (``backends.mpi.frames``), and computes with FEDF's
own functions: a worker rank runs ``algorithms.fedf.workers_side`` for its workers,
a master runs ``master.select`` and then Eq. (3) over the frames it accepted
(``algorithms.fedf.conclude``). The same master serves the flat run (rank 0 over the
worker ranks), a group master over its group's worker ranks (``Comm.Split``), and the
top master over the group masters, each of which is one worker of the top level:
it runs ``--group-epochs`` inner epochs with its group, then sends the top its
S_g, C_g and the model or the ternary of Q_g (``algorithms.fedf.level``).

- ``fedf``: the FEDF master over any link, a worker rank, a group master.
- ``asynchronous``: ``--schedule async`` in groups: the top master applying the group
  masters' contributions as they arrive (``backends.mpi.p2p``), a group master's loop of
  jobs until stopped, its worker ranks'.
- ``secure``: ``--secure-sum secagg`` in a flat run: every worker a secure-aggregation
  client on its worker rank, the master the server relaying their messages; Eq. (3) from
  the sum.
- ``admm``: the ADMM SVM's master and worker ranks (consensus, samples split): the
  four phases of ``admm.consensus_step`` with the sums over ranks in float64.
"""
