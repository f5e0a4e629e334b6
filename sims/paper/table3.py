"""Table 3 analog: bytes exchanged per epoch with N = 3 workers, from counted bytes.

    python sims/paper/table3.py            # prints the table, writes sims/paper/table3.md

Rows: the paper's V values (1.8 MB for ResNet-32, 138.1 MB for U-Net) and this
package's own ResNet-32 and U-Net (M parameters including batch statistics,
V = 4 M bytes). Columns: FEDF with the paper's 2-bit packing and with base-3
packing (codec.epoch_bytes: every frame of an epoch, payload and headers), Phong
et al. (2 N V: each worker downloads and uploads the model), TernGrad (the
paper's B V / 16 with B = 100 mini-batches per epoch, as its Table 3 assumes; and
this package's count of its messages: uploads, shared scaler, summed ternaries
down, headers). ``paper`` columns are the formulas the paper used; ``counted``
columns add everything the wire carries.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedf_jax import codec
from fedf_jax.algorithms import terngrad
from fedf_jax.algorithms.common import model_exchange_bytes
from fedf_jax.models import make_model

N = 3
PAPER_BATCHES = 100  # Table 3's TernGrad row: 6.25 V = 100 V / 16
PAPER = {"ResNet32 (paper V = 1.8 MB)": (7.43, 10.80, 11.25),
         "U-Net (paper V = 138.1 MB)": (569.66, 828.60, 863.13)}


def rows() -> list[tuple[str, int, tuple | None]]:
    """(name, M, the paper's printed row or None)."""
    resnet = make_model("resnet32", (32, 32, 3), 10)
    unet = make_model("unet", (512, 512, 1), 2, width=64)
    return [("ResNet32 (paper V = 1.8 MB)", int(1.8e6 / 4), PAPER["ResNet32 (paper V = 1.8 MB)"]),
            ("U-Net (paper V = 138.1 MB)", int(138.1e6 / 4), PAPER["U-Net (paper V = 138.1 MB)"]),
            (f"ResNet-32 here (M = {resnet.num_params:,})", resnet.num_params, None),
            (f"U-Net width 64 here (M = {unet.num_params:,})", unet.num_params, None)]


def table() -> str:
    mb = 1e6
    lines = [f"Bytes per epoch, N = {N} workers, in MB (1 MB = 10^6 B).", "",
             "| model | V (MB) | FEDF 2bit paper (Eq. 8) | FEDF 2bit counted | "
             "FEDF base3 counted | Phong paper (2NV) | Phong counted | "
             "TernGrad paper (BV/16, B=100) | TernGrad counted (B=100) | paper's row |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, m, printed in rows():
        v = 4 * m
        eq8 = codec.paper_bytes_per_epoch(v, N)
        f2 = codec.epoch_bytes(m, N, "2bit").total
        f3 = codec.epoch_bytes(m, N, "base3").total
        ph = model_exchange_bytes(m, N, N)
        # B = 100 steps spread over the N workers as evenly as possible.
        per = [PAPER_BATCHES // N + (k < PAPER_BATCHES % N) for k in range(N)]
        nb = list(reversed(sorted(per)))
        tg = terngrad.epoch_bytes(m, 0, np.asarray(nb))
        cells = [eq8, f2, f3, ph.down + ph.up_model, ph.total,
                 terngrad.paper_bytes_per_epoch(v, PAPER_BATCHES), tg.total]
        paper = " / ".join(f"{x:.2f}" for x in printed) if printed else "—"
        lines.append(f"| {name} | {v / mb:.2f} | " + " | ".join(f"{c / mb:,.2f}" for c in cells)
                     + f" | {paper} |")
    lines += ["", "The paper's row is FEDF / Phong / TernGrad as printed in its Table 3."]
    return "\n".join(lines) + "\n"


def main() -> int:
    text = table()
    print(text)
    out = Path(__file__).resolve().parent / "table3.md"
    out.write_text(text, encoding="utf-8")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
