"""Secure layers: secure aggregation, packed Paillier, AEAD on the wire.

- secagg (Bonawitz et al. 2017) at n = 10 clients, M = 10^6 u32, 3 dropouts: a client's
  masking time (round 2), the server's unmasking time (round 4) against a plain numpy sum
  of the same rows, and bytes per client against the plain vector (sent, and sent +
  received), measured from the messages and, by the same per-message sizes, at 2^10
  clients and 2^20 values (Bonawitz et al. report 1.73x there with their encoding).
- Paillier at 2048 bits: packed encryption of M = 9,610 values (32-bit slots) against
  python-paillier (``phe``) encrypting them one by one. phe runs on a fixed subset and is
  extrapolated per element (said in the output). Packed encryption is timed three ways:
  public key with fresh noise; private key (CRT noise, as a participant in Phong et al.
  2018 holds the key); and online with the noise drawn beforehand (NoisePool), pool time
  shown apart. Then bytes on the wire, and the sum of 10 vectors decrypted.
- AEAD: GB/s of seal and open on 40 MB frames for AES-256-GCM and ChaCha20-Poly1305,
  fresh output and reused buffers, against a plain copy of the same bytes.
- FEDF epoch (``fedf simulate``'s jitted step: digits, the MLP, M = 9,610) with
  ``--secure-sum secagg`` against ``none`` at N = 10 and 100 workers: the two steps
  timed in turn (interleaved repetitions, after a warm-up epoch each), and the secagg
  round alone on the same rows' shape (``sums.integer_sum``, every party in this one
  process: N clients' masking and key sharing, the server's unmasking).

All ratios are against baselines timed in the same process.

    python sims/bench/secure.py            # the sizes above
    python sims/bench/secure.py --quick    # M = 10^5, 4 MB frames, a smaller phe subset
    python sims/bench/secure.py --only fedf-epoch   # the FEDF epoch figures only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import jax  # noqa: E402

from fedf_jax import codec, config, harness, layout  # noqa: E402
from fedf_jax.algorithms import fedf  # noqa: E402
from fedf_jax.secure import aead, paillier, secagg, sums  # noqa: E402

log = print


def _clock(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _median_min(ts):
    return statistics.median(ts), min(ts)


def bench_secagg(quick: bool) -> dict:
    n, t, dropped, m = 10, 6, (2, 5, 8), 10**5 if quick else 10**6
    x = np.random.default_rng(0).integers(0, 2**32, (n, m), dtype=np.uint32)
    alive = [k for k in range(n) if k not in dropped]
    reps = 2 if quick else 3
    mask_ts, unmask_ts, plain_ts, share_ts, round_ts = [], [], [], [], []
    for rep in range(reps):
        t0 = time.perf_counter()
        clients = [secagg.Client(k, n, t, m, np.uint32, seed=rep) for k in range(n)]
        server = secagg.Server(n, t, m, np.uint32)
        keys = server.collect_keys({k: c.advertise() for k, c in enumerate(clients)})
        boxes = {}
        for k, c in enumerate(clients):
            boxes[k], dt = _clock(c.share_keys, keys)
            share_ts.append(dt)
        routed = server.route_shares(boxes)
        ys = {}
        for k in alive:
            ys[k], dt = _clock(clients[k].masked_input, x[k], routed[k])
            mask_ts.append(dt)
        survivors = server.collect_masked(ys)
        resp = {k: clients[k].unmask_shares(survivors) for k in alive}
        total, dt = _clock(server.aggregate, resp)
        unmask_ts.append(dt)
        round_ts.append(time.perf_counter() - t0)
        ref, dt = _clock(lambda: x[alive].sum(0, dtype=np.uint32))
        plain_ts.append(dt)
        if not np.array_equal(total, ref):
            raise AssertionError("secure aggregate differs from the plain sum")
    rb = server.round_bytes()
    k = alive[0]
    sent, both = rb.sent[k].sum(), rb.sent[k].sum() + rb.received[k].sum()
    # The same message sizes at Bonawitz et al.'s scale: n = 2^10, M = 2^20, 5% dropped.
    big_n, big_m, big_d = 2**10, 2**20, 51
    big_sent = 68 + 94 * (big_n - 1) + 4 * big_m + 37 * big_n
    big_recv = 68 * big_n + 94 * (big_n - 1) + 4 * (big_n - big_d)
    res = {
        "n": n, "threshold": t, "dropped": list(dropped), "M": m, "dtype": "uint32",
        "client_share_keys_s": _median_min(share_ts),
        "client_mask_s": _median_min(mask_ts), "server_unmask_s": _median_min(unmask_ts),
        "plain_sum_s": _median_min(plain_ts), "whole_round_s": _median_min(round_ts),
        "bytes_sent_per_client": int(sent), "bytes_sent_received_per_client": int(both),
        "plain_bytes": rb.plain, "expansion_sent": sent / rb.plain,
        "expansion_sent_received": both / rb.plain,
        "expansion_2p10_clients_2p20_values": (big_sent + big_recv) / (4 * big_m),
    }
    med = res["server_unmask_s"][0] / res["plain_sum_s"][0]
    log(f"secagg n={n} t={t} dropped={dropped} M={m:,} u32 ({reps} rounds):")
    log(f"  client masking (round 2): median {1e3 * res['client_mask_s'][0]:.1f} ms, "
        f"min {1e3 * res['client_mask_s'][1]:.1f} ms; key sharing (round 1): "
        f"{1e3 * res['client_share_keys_s'][0]:.1f} ms")
    log(f"  server unmasking (round 4): median {1e3 * res['server_unmask_s'][0]:.1f} ms "
        f"= {med:.0f}x a plain numpy sum of the {len(alive)} rows "
        f"({1e3 * res['plain_sum_s'][0]:.2f} ms); whole round {res['whole_round_s'][0]:.2f} s")
    log(f"  bytes per surviving client: sent {sent:,} ({res['expansion_sent']:.4f}x the plain "
        f"{rb.plain:,}-byte vector), sent+received {both:,} "
        f"({res['expansion_sent_received']:.4f}x)")
    log(f"  same message sizes at 2^10 clients, 2^20 u32 values, 5% dropped: "
        f"{res['expansion_2p10_clients_2p20_values']:.3f}x sent+received "
        f"(Bonawitz et al. 2017 report 1.73x there, with their own encoding)")
    return res


def bench_paillier(quick: bool) -> dict:
    import phe

    m, subset, groups, reps = 9610, 40 if quick else 100, 10, 1 if quick else 3
    (pk, sk), keygen_s = _clock(paillier.keygen, 2048)
    rng = np.random.default_rng(0)
    vals = [rng.integers(-(2**20), 2**20, m) for _ in range(groups)]
    k = -(-m // paillier.slots(pk, 32))
    ppk = phe.PaillierPublicKey(int(pk.n))
    psk = phe.PaillierPrivateKey(ppk, int(sk.p), int(sk.q))
    sub = [int(v) for v in vals[0][:subset]]
    enc_pk, enc_sk, phe_ts = [], [], []
    for _ in range(reps):  # in turn, so that both see the same load
        phe_cts, dt = _clock(lambda: [ppk.encrypt(v) for v in sub])
        phe_ts.append(dt / subset)
        ct_pk, dt = _clock(paillier.encrypt, pk, vals[0])
        enc_pk.append(dt)
        ct_sk, dt = _clock(paillier.encrypt, sk, vals[1])
        enc_sk.append(dt)
    enc_pk_s, enc_sk_s = statistics.median(enc_pk), statistics.median(enc_sk)
    phe_per_value = statistics.median(phe_ts)
    phe_full = phe_per_value * m
    pool, pool_s = _clock(paillier.NoisePool, sk, k * (groups - 2))
    cts, online = [ct_pk, ct_sk], []
    for v in vals[2:]:
        ct, dt = _clock(lambda v=v: paillier.encrypt(pk, v, noise=pool))
        cts.append(ct)
        online.append(dt)
    enc_pool_s = statistics.median(online)
    total, add_s = _clock(paillier.sum_ciphertexts, pk, cts)
    out, dec_s = _clock(paillier.decrypt, sk, total, m)
    if not np.array_equal(out, np.sum(vals, axis=0)):
        raise AssertionError("decrypted packed sum differs from the plain sum")
    _, phe_dec_s = _clock(lambda: [psk.decrypt(c) for c in phe_cts])
    ours_bytes = paillier.nbytes(ct_pk)
    phe_bytes = m * ((int(pk.nsquare).bit_length() + 7) // 8)
    res = {
        "bits": 2048, "M": m, "slot_bits": 32, "slots_per_ciphertext": paillier.slots(pk, 32),
        "ciphertexts": k, "keygen_s": keygen_s, "encrypt_public_s": enc_pk_s,
        "encrypt_private_crt_s": enc_sk_s, "noise_pool_s_per_vector": pool_s / (groups - 2),
        "encrypt_online_with_pool_s": enc_pool_s, "phe_subset": subset,
        "phe_encrypt_s_per_value": phe_per_value, "phe_encrypt_extrapolated_s": phe_full,
        "speedup_public": phe_full / enc_pk_s, "speedup_private_crt": phe_full / enc_sk_s,
        "speedup_online_pool": phe_full / enc_pool_s, "bytes": ours_bytes,
        "phe_bytes": phe_bytes, "add_10_s": add_s, "decrypt_sum_s": dec_s,
        "phe_decrypt_extrapolated_s": phe_dec_s / subset * m,
    }
    log(f"paillier 2048-bit, M={m:,}, 32-bit slots ({res['slots_per_ciphertext']} per "
        f"ciphertext, {k} ciphertexts); keygen {keygen_s:.2f} s:")
    log(f"  phe encrypts a fixed subset of {subset} values one by one: "
        f"{1e3 * phe_per_value:.1f} ms/value, extrapolated to {m:,} values: {phe_full:.1f} s "
        f"(medians of {reps}, timed in turn with the packed runs)")
    log(f"  packed, public key, fresh noise: {enc_pk_s:.2f} s ({res['speedup_public']:.0f}x "
        f"faster than phe)")
    log(f"  packed, private key (CRT noise): {enc_sk_s:.2f} s "
        f"({res['speedup_private_crt']:.0f}x faster)")
    log(f"  packed, noise drawn beforehand: {1e3 * enc_pool_s:.1f} ms online "
        f"({res['speedup_online_pool']:.0f}x faster); the pool took "
        f"{res['noise_pool_s_per_vector']:.2f} s per vector (CRT), before the data existed")
    log(f"  bytes: {ours_bytes:,} packed vs {phe_bytes:,} for phe ({phe_bytes / ours_bytes:.0f}x "
        f"fewer)")
    log(f"  sum of {groups} vectors: add {1e3 * add_s:.1f} ms, decrypt {1e3 * dec_s:.1f} ms "
        f"(phe decrypting {m:,} values, extrapolated from {subset}: "
        f"{res['phe_decrypt_extrapolated_s']:.2f} s)")
    return res


def bench_aead(quick: bool) -> dict:
    count = (1 if quick else 10) * 10**6  # f32 values: 4 MB or 40 MB frames
    frame = codec.encode_frame(codec.Kind.MODEL_UP, 0, 1, codec.Payload.F32, count,
                               np.arange(count, dtype=np.float32))
    reps, size = 3 if quick else 5, len(frame)
    key = os.urandom(32)
    copy_ts = [_clock(bytes, bytearray(frame))[1] for _ in range(reps)]
    res = {"frame_bytes": size, "copy_gbps": size / statistics.median(copy_ts) / 1e9}
    log(f"aead, {size / 1e6:.0f} MB frames (median of {reps}; plain copy of the frame "
        f"{res['copy_gbps']:.2f} GB/s):")
    for cipher in sorted(aead.CIPHERS):
        tx, rx = aead.Channel(key, 1, 0, cipher=cipher), aead.Channel(key, 1, 0, cipher=cipher)
        out, back = bytearray(size + aead.OVERHEAD), bytearray(size)
        ts = {"seal": [], "open": [], "seal_into": [], "open_into": []}
        for _ in range(reps):
            sealed, dt = _clock(tx.seal, frame)
            ts["seal"].append(dt)
            opened, dt = _clock(rx.open, sealed)
            ts["open"].append(dt)
            sealed, dt = _clock(tx.seal, frame, out)
            ts["seal_into"].append(dt)
            opened, dt = _clock(rx.open, sealed, back)
            ts["open_into"].append(dt)
        if bytes(opened) != frame:
            raise AssertionError("opened frame differs")
        gbps = {k: size / statistics.median(v) / 1e9 for k, v in ts.items()}
        res[cipher] = gbps
        log(f"  {cipher:18s} seal {gbps['seal']:.2f} GB/s, open {gbps['open']:.2f} GB/s; "
            f"into reused buffers: seal {gbps['seal_into']:.2f}, open {gbps['open_into']:.2f}")
    return res


def bench_fedf_epoch(quick: bool, workers=(10, 100)) -> dict:
    """FEDF's simulated epoch with --secure-sum secagg against none, per N."""
    reps = {10: 3, 100: 2} if quick else {10: 7, 100: 4}
    out = {}
    log("FEDF epoch (fedf simulate, digits, MLP), --secure-sum secagg vs none, timed in turn:")
    for n in workers:
        steps = {}
        for mode in ("none", "secagg"):
            cfg = config.make(workers=n, epochs=1, seed=0, secure_sum=mode)
            host = harness.load(cfg)
            alg = fedf.make(cfg, host, layout.HERE)
            step = jax.jit(alg.step, donate_argnums=0)
            (state, _), _ = common.timed(step, alg.init(), alg.data)  # compile, warm up
            steps[mode] = [step, state, alg.data, []]
        m = host.model.num_params
        for _ in range(reps.get(n, 3)):
            for mode in ("none", "secagg"):
                step, state, data, ts = steps[mode]
                (steps[mode][1], _), dt = common.timed(step, state, data)
                ts.append(dt)
        rows = np.random.default_rng(0).integers(-20, 21, (n, m)).astype(np.int32)
        round_ts = [_clock(sums.integer_sum, rows, b"bench", b"round %d" % i)[1]
                    for i in range(2)]
        plain, secure = (statistics.median(steps[k][3]) for k in ("none", "secagg"))
        out[n] = {"M": m, "none_s": _median_min(steps["none"][3]),
                  "secagg_s": _median_min(steps["secagg"][3]), "ratio": secure / plain,
                  "ratio_of_mins": min(steps["secagg"][3]) / min(steps["none"][3]),
                  "secagg_round_s": _median_min(round_ts), "reps": reps.get(n, 3)}
        log(f"  N={n:4d} M={m:,}: none {1e3 * plain:.1f} ms, secagg {1e3 * secure:.1f} ms "
            f"(median of {reps.get(n, 3)}) = {secure / plain:.1f}x (ratio of mins "
            f"{out[n]['ratio_of_mins']:.1f}x); the secagg round alone "
            f"{1e3 * statistics.median(round_ts):.0f} ms")
    return out


PARTS = {"secagg": bench_secagg, "paillier": bench_paillier, "aead": bench_aead,
         "fedf-epoch": bench_fedf_epoch}


def run(quick: bool, only: str | None = None) -> dict:
    res = {"machine": common.machine(), "quick": quick}
    log(f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, load "
        f"{res['machine']['load_avg_1m']:.1f}")
    for name, bench in PARTS.items():
        if only in (None, name):
            res[name.replace("-", "_")] = bench(quick)
    return res


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=sorted(PARTS), help="one measurement only")
    parser.add_argument("--json")
    args = parser.parse_args()
    res = run(args.quick, args.only)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
