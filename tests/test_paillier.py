"""fedf_jax.secure.paillier: exact packed sums, signed slots, head-room errors, the wire
form, and python-paillier (``phe``) as an independent oracle."""

import importlib
import sys

import numpy as np
import pytest

gmpy2 = pytest.importorskip("gmpy2")
phe = pytest.importorskip("phe")
from fedf_jax.secure import paillier  # noqa: E402

M = 9610


@pytest.fixture(scope="module")
def key512():
    return paillier.keygen(512, seed=0)


@pytest.fixture(scope="module")
def key2048():
    return paillier.keygen(2048, seed=1)


def _values(m, bits, seed):
    bound = 2 ** bits
    return np.random.default_rng(seed).integers(-bound + 1, bound, m)


def test_sum_of_two_packed_vectors_is_exact(key512):
    pk, sk = key512
    for trial in range(5):
        a, b = _values(M, 23, 2 * trial), _values(M, 23, 2 * trial + 1)
        enc_key = sk if trial % 2 else pk  # the key holder encrypts via the CRT
        total = paillier.add(pk, paillier.encrypt(enc_key, a), paillier.encrypt(pk, b))
        out = paillier.decrypt(sk, total, n=M, slot_bits=32)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, a + b)


def test_2048_bit_round(key2048):
    pk, sk = key2048
    assert int(pk.n).bit_length() == 2048
    a, b = _values(200, 23, 0), _values(200, 23, 1)
    total = paillier.add(pk, paillier.encrypt(pk, a), paillier.encrypt(pk, b))
    np.testing.assert_array_equal(paillier.decrypt(sk, total, n=200), a + b)
    assert len(total.values) == -(-200 // 63)  # 63 slots of 32 bits under 2048 bits


@pytest.mark.parametrize(("slot_bits", "headroom"), [(8, 2), (16, 2), (24, 3), (48, 5),
                                                     (64, 4), (64, 0)])
def test_extreme_negative_and_positive_slots_sum_to_the_edge(key512, slot_bits, headroom):
    pk, sk = key512
    edge = 2 ** (slot_bits - 1 - headroom) - 1
    vals = np.array([-edge, edge, 0, -1, 1] * 7, np.int64)
    cts = [paillier.encrypt(pk, vals, slot_bits, headroom_bits=headroom)
           for _ in range(2 ** headroom)]
    total = paillier.sum_ciphertexts(pk, cts)
    expected = [sum(int(v) for _ in range(2 ** headroom)) for v in vals]
    np.testing.assert_array_equal(paillier.decrypt(sk, total, n=35, slot_bits=slot_bits),
                                  np.array(expected, np.int64))


def test_overflow_errors_name_the_bound(key512):
    pk, _ = key512
    with pytest.raises(ValueError, match=r"value 8388608 at index 2 .*2\*\*23"):
        paillier.encrypt(pk, [0, 1, 2**23])
    with pytest.raises(ValueError, match=r"value -8388608 at index 0"):
        paillier.encrypt(pk, [-(2**23), 1])
    ct = paillier.encrypt(pk, [1, 2, 3], headroom_bits=1)
    two = paillier.add(pk, ct, ct)
    with pytest.raises(ValueError, match=r"2 \+ 1 summands exceeds the head-room bound of "
                                         r"2\*\*1 = 2"):
        paillier.add(pk, two, ct)
    with pytest.raises(ValueError, match="layouts differ"):
        paillier.add(pk, ct, paillier.encrypt(pk, [1, 2]))
    with pytest.raises(TypeError, match="float64"):
        paillier.encrypt(pk, [0.5])
    with pytest.raises(ValueError, match=r"`slot_bits` \(=12\)"):
        paillier.encrypt(pk, [1], slot_bits=12)


def test_phe_decrypts_our_ciphertexts_and_we_decrypt_phe(key512):
    pk, sk = key512
    ppk = phe.PaillierPublicKey(int(pk.n))
    psk = phe.PaillierPrivateKey(ppk, int(sk.p), int(sk.q))
    vals = [-(2**23) + 1, -5, 0, 7, 2**23 - 1]
    for v in vals:  # one value per ciphertext: the plaintext is v mod n, phe's encoding
        ct = paillier.encrypt(pk, [v])
        assert psk.decrypt(phe.EncryptedNumber(ppk, int(ct.values[0]), 0)) == v
    ours = [paillier.Ciphertext((ppk.encrypt(v).ciphertext(False),), 1, 32, 8, 1,
                                len(paillier.encrypt(pk, [0]).to_bytes()) - paillier.HEADER_SIZE)
            for v in vals]
    total = paillier.sum_ciphertexts(pk, ours)
    assert paillier.decrypt(sk, total, n=1)[0] == sum(vals)
    # A packed plaintext, read raw by phe, is sum_i v_i 2^(32 i) mod n.
    packed = np.array([3, -4, 5, 2**20], np.int64)
    raw = psk.raw_decrypt(int(paillier.encrypt(pk, packed).values[0]))
    assert raw == sum(int(v) << (32 * i) for i, v in enumerate(packed)) % int(pk.n)


def test_nbytes_formula_and_wire_round_trip(key512, key2048):
    for (pk, sk), bits in ((key512, 512), (key2048, 2048)):
        v = _values(1000, 20, 3)
        ct = paillier.encrypt(pk, v)
        slots = (bits - 1) // 32
        assert paillier.nbytes(ct) == 28 + -(-1000 // slots) * (2 * bits // 8)
        wire = ct.to_bytes()
        assert len(wire) == paillier.nbytes(ct)
        back = paillier.Ciphertext.from_bytes(wire, pk)
        assert back == ct
        np.testing.assert_array_equal(paillier.decrypt(sk, back, n=1000), v)
        with pytest.raises(ValueError, match="header says"):
            paillier.Ciphertext.from_bytes(wire[:-1])
    with pytest.raises(ValueError, match="does not belong to this public key"):
        paillier.Ciphertext.from_bytes(paillier.encrypt(key512[0], [1]).to_bytes(), key2048[0])


def test_noise_pool_values_are_used_once(key512):
    pk, sk = key512
    pool = paillier.NoisePool(sk, 3, seed=5)
    again = paillier.NoisePool(sk, 3, seed=5)
    a = paillier.encrypt(pk, [1, 2, 3], noise=pool)
    assert a == paillier.encrypt(pk, [1, 2, 3], noise=again)  # the same seed, the same r
    assert len(pool) == 2
    # Every noise value, by the CRT or not, is an n-th residue: x^phi(n) = 1 mod n^2.
    phi = (sk.p - 1) * (sk.q - 1)
    for x in paillier.NoisePool(sk, 4, seed=1)._values + paillier.NoisePool(pk, 4)._values:
        assert gmpy2.powmod(x, phi, pk.nsquare) == 1
    assert gmpy2.powmod(gmpy2.mpz(2), phi, pk.nsquare) != 1  # the check can fail
    c = paillier.encrypt(pk, [1, 2, 3], noise=pool)
    assert c.values != a.values  # the next value, not the same one again
    assert paillier.encrypt(pk, [1, 2, 3]).values != paillier.encrypt(pk, [1, 2, 3]).values
    with pytest.raises(ValueError, match="noise pool has 1 values left; 2 are needed"):
        paillier.encrypt(pk, np.zeros(20, np.int64), noise=pool)
    np.testing.assert_array_equal(paillier.decrypt(sk, paillier.add(pk, a, c), n=3), [2, 4, 6])


def test_keygen_sizes_primes_and_seeds():
    pk, sk = paillier.keygen(256, seed=7)
    assert int(pk.n).bit_length() == 256 and pk.n == sk.p * sk.q
    assert gmpy2.is_prime(sk.p) and gmpy2.is_prime(sk.q) and sk.p != sk.q
    assert paillier.keygen(256, seed=7)[0] == pk
    assert paillier.keygen(256, seed=8)[0] != pk
    assert paillier.keygen(256)[0] != paillier.keygen(256)[0]
    with pytest.raises(ValueError, match=r"`bits` \(=255\)"):
        paillier.keygen(255)
    with pytest.raises(ValueError, match=r"asked for n=4"):
        paillier.decrypt(sk, paillier.encrypt(pk, [1, 2, 3]), n=4)


def test_fixed_point_helpers_round_trip():
    x = np.array([-1.5, 0.25, 3.0])
    np.testing.assert_array_equal(paillier.to_fixed(x, 8), [-384, 64, 768])
    np.testing.assert_array_equal(paillier.from_fixed(paillier.to_fixed(x, 8), 8), x)


def test_missing_gmpy2_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gmpy2", None)
    monkeypatch.delitem(sys.modules, "fedf_jax.secure.paillier")
    with pytest.raises(ImportError, match=r'pip install "fedf-jax\[secure\]"'):
        importlib.import_module("fedf_jax.secure.paillier")
