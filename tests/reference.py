"""Plain numpy references of the protocol and the packings, written from DESIGN §1 and §2
only: one element (or one trit) at a time, no vectorised tricks, nothing from fedf_jax.

Shared by the tests; each test compares the library against these loops.
"""

import math

import numpy as np

# --------------------------------------------------------------------------- §1 protocol


def ref_goodness(costs, prev_costs, sizes, epoch):
    """Eq. (1) in float64 on the float32 inputs; NaN marks a non-finite input."""
    costs = np.asarray(costs, np.float32).astype(np.float64)
    prev_costs = np.asarray(prev_costs, np.float32).astype(np.float64)
    out = np.zeros(len(costs), np.float64)
    for k in range(len(costs)):
        s = float(sizes[k])
        if epoch == 1:
            out[k] = s / costs[k] if math.isfinite(costs[k]) else math.nan
        else:
            if math.isfinite(costs[k]) and math.isfinite(prev_costs[k]):
                out[k] = s * (prev_costs[k] - costs[k])
            else:
                out[k] = math.nan
    return out


def ref_select_pilot(g):
    """argmax over the finite values, the lowest index on ties; -1 when none is finite."""
    best, best_val = -1, None
    for k, v in enumerate(g):
        v = float(v)
        if not math.isfinite(v):
            continue
        if best_val is None or v > best_val:  # strictly greater: ties keep the lowest index
            best, best_val = k, v
    return best


def _sign(x):
    return 1 if x > 0 else (-1 if x < 0 else 0)


def ref_ternarize(q, p_prev, p_prev2, alpha, beta, epoch):
    """Eq. (4) at t = 1, Eq. (5) at t >= 2, element by element in float32."""
    q = np.asarray(q, np.float32)
    p_prev = np.asarray(p_prev, np.float32)
    p_prev2 = np.asarray(p_prev2, np.float32)
    alpha = np.float32(alpha)
    beta = np.float32(beta)
    out = np.zeros(q.shape[0], np.int8)
    for i in range(q.shape[0]):
        diff = np.float32(q[i] - p_prev[i])
        if epoch == 1:
            if diff < -alpha:
                out[i] = -1
            elif diff > alpha:
                out[i] = 1
            else:
                out[i] = 0
        else:
            step = np.float32(p_prev[i] - p_prev2[i])
            if abs(diff) < np.float32(beta * abs(step)):
                out[i] = 0
            else:
                out[i] = _sign(diff) * _sign(step)
    return out


def ref_master_update(q_pilot, ternaries, sizes, pilot, p_prev, p_prev2, alpha0, beta, epoch,
                      direction=1, mask=None):
    """Eq. (3) in float64; the pilot's row (and masked-out rows) never read; p_k = S_k / S
    over all N workers, masked or not."""
    n, m = ternaries.shape
    total = float(sum(float(s) for s in sizes))
    betas = np.broadcast_to(np.asarray(beta, np.float64), (n,))
    out = np.asarray(q_pilot, np.float32).astype(np.float64).copy()
    for k in range(n):
        if k == pilot or (mask is not None and not mask[k]):
            continue
        p_k = float(sizes[k]) / total
        for i in range(m):
            t = int(ternaries[k, i])
            if epoch == 1:
                out[i] += direction * alpha0 * p_k * t
            else:
                step = float(np.float32(p_prev[i])) - float(np.float32(p_prev2[i]))
                out[i] += direction * p_k * float(betas[k]) * t * step
    return out


# --------------------------------------------------------------------------- §2 packing

TRITS_PER_BYTE = {"2bit": 4, "base3": 5}


def ref_packed_size(n, scheme):
    return -(-n // TRITS_PER_BYTE[scheme])


def ref_pack(t, scheme):
    """2bit: code of value i in bits 2(i%4).. of byte i//4; base3: byte = sum (T_i + 1) 3^i.
    The tail is padded with the value 0."""
    t = [int(v) for v in t]
    out = [0] * ref_packed_size(len(t), scheme)
    if scheme == "2bit":
        code = {0: 0b00, 1: 0b01, -1: 0b11}
        for i, v in enumerate(t):
            out[i // 4] |= code[v] << (2 * (i % 4))
    else:
        for b in range(len(out)):
            for j in range(5):
                i = 5 * b + j
                v = t[i] if i < len(t) else 0  # tail padded with value 0 (digit 1)
                out[b] += (v + 1) * 3**j
    return np.array(out, np.uint8)


def ref_unpack(buf, n, scheme):
    """Decode, raising ValueError on a bad length, an invalid code or bad padding."""
    buf = [int(b) for b in buf]
    if len(buf) != ref_packed_size(n, scheme):
        raise ValueError("length")
    out = []
    if scheme == "2bit":
        value = {0b00: 0, 0b01: 1, 0b11: -1}
        for b, byte in enumerate(buf):
            for j in range(4):
                c = (byte >> (2 * j)) & 0b11
                if c not in value:
                    raise ValueError("code 10")
                if 4 * b + j < n:
                    out.append(value[c])
                elif c != 0:
                    raise ValueError("padding")
    else:
        for b, byte in enumerate(buf):
            if byte > 242:
                raise ValueError("byte > 242")
            for j in range(5):
                d = byte % 3
                byte //= 3
                if 5 * b + j < n:
                    out.append(d - 1)
                elif d != 1:
                    raise ValueError("padding")
    return np.array(out, np.int8)
