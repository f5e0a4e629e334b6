"""The MPI backend: moving FEDF's messages between ranks under ``mpiexec``.

DESIGN §5. ``mpiexec -n K fedf train [flags]`` spreads the N workers over the K - 1
worker ranks in contiguous blocks, as evenly as possible (``split_workers``). Every
rank computes the run's seeded partition and keeps only its own workers' samples; a
worker rank trains its workers with FEDF's own workers side (one jitted step per
rank, each worker on its own global PRNG stream), so the MPI and vmap backends
agree. The master holds no training data, only the test set. The rank loops live
in ``fedf_jax.train``; this package moves the data: ``link`` (transport under
deadlines), ``wire`` (``--wire aead``: every message sealed per link and direction,
keys agreed at start-up), ``frames`` (the upload), ``resume`` (checkpoints),
``faults`` (test faults, passed in as a parameter), ``p2p`` (the asynchronous top's
point-to-point messages: it takes the group masters as they finish).

One global epoch t moves these messages, all numpy buffers through upper-case
mpi4py methods (nothing is pickled, nothing unchecked is parsed):

1. model down: ``Ibcast`` of P^{t-1} (f32[M]); a worker rank receives it once for all
   of its workers.
2. the worker ranks train (Algorithm 2) and pack their ternaries (the fused kernel).
3. costs up: each worker rank sends its workers' C_k^t (f64) to rank 0, point to
   point, so that the master can name a rank that stays silent.
4. the master computes goodness and the pilot (``master.select``, Eq. 1).
5. commands down: one ``Iscatterv`` of one byte per worker: SEND_MODEL to the pilot,
   SEND_TERNARY to the others (``SEND_NOTHING`` to all when no worker is usable).
   A scatter, not a broadcast of the pilot id: each worker learns its own command
   only, not who the pilot is, as in the paper's Algorithm 2.
6. frame lengths up: each worker rank sends its frames' byte lengths (i64 per
   worker), point to point; the master sizes the gather from them.
7. frames up: ONE ``Igatherv`` of bytes. Each rank sends its workers' frames
   (``codec`` frames: header, CRC32, payload) back to back in worker order: the
   pilot's Q_{k*}^t as a ``MODEL_UP`` frame (f32), every other worker's packed
   ternary as a ``TERNARY`` frame (``2bit`` or ``base3``).
8. the master checks every frame (``codec.decode_array`` / ``codec.decode_packed``).
   A frame that fails is dropped: that worker's ternary is masked out of Eq. (3),
   the reason goes to the epoch's ``dropped_frames``, and the epoch goes on; if
   the pilot's model frame fails, P^t = P^{t-1} (as with no usable pilot). Then the
   same jitted ``master.update`` as the vmap backend (fused unpack + Eq. 3) and the
   test metrics.

Faults. Any exception on any rank prints ``fedf: error: rank R ...`` and calls
``MPI.COMM_WORLD.Abort``, which ends the whole job (no hang). Every wait is a
non-blocking call polled under a deadline (``timeout``, seconds); when it expires
the waiting rank prints ``fedf: error: rank R sent nothing for S s at epoch T
(<stage>); aborting`` and calls ``Abort(2)``. Stages waited on per peer (costs,
frame lengths, setup, checkpoint acks) name the silent rank; the frames
``Igatherv`` names no rank (every rank has just sent its lengths when it starts).

Byte accounting. Each epoch record carries the byte fields of ``fedf simulate``
(``codec.epoch_bytes``: every message a one-worker-per-host deployment sends,
frame headers included), so MPI and vmap logs compare equal, plus ``mpi_bytes``:
the bytes MPI really moved this epoch (``mpi_bytes_detail`` by message). They
differ because a worker rank gets P^{t-1} once for all its workers, and the model
down, costs and commands go as bare MPI buffers (unframed), while the uploads are
framed and preceded by their lengths (8 bytes per worker).
"""

from fedf_jax.backends.mpi.faults import Fault
from fedf_jax.backends.mpi.frames import SEND_NOTHING, Upload, decode_frames, encode_frames
from fedf_jax.backends.mpi.link import (
    DEFAULT_TIMEOUT,
    Link,
    RankLayout,
    install_excepthook,
    split_workers,
)
from fedf_jax.backends.mpi.resume import ResumeError

__all__ = ["DEFAULT_TIMEOUT", "SEND_NOTHING", "Fault", "Link", "RankLayout", "ResumeError",
           "Upload", "decode_frames", "encode_frames", "install_excepthook", "split_workers"]
