"""Codec throughput: MB of float32 update encoded / decoded per second, on one core.

Two inputs, both heavy-tailed (Student-t, 3 degrees of freedom, seeded):
- ``tensor``: one 4M-element tensor (16 MB);
- ``ddpm-small``: the 144 tensors of a ddpm-small update (701k parameters,
  2.8 MB), through ``encode_update`` with error feedback, as a client sends it.
The baseline in the same run is the uncompressed wire form (``tobytes`` and
``frombuffer`` of every tensor). The process is pinned to one core; each number
is the median of ``--repeats`` timings.

Writes DIR/codec_throughput.csv (codec, input, mb, encode_mb_s, decode_mb_s,
encode_vs_baseline, bytes, ratio) and DIR/codec_throughput.png.

    python experiments/compression/bench_codec.py [--out DIR] [--repeats N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedsim.compression.codecs import decode_update, encode_update, make_codec  # noqa: E402

CODECS = [("none (raw float32)", None), ("topk p=0.01", ("topk", {"keep_ratio": 0.01})),
          ("stc p=0.01", ("stc", {"keep_ratio": 0.01})),
          ("dhq p=0.01 L=4", ("dhq", {"keep_ratio": 0.01, "levels": 4})),
          ("dhq p=0.05 L=4", ("dhq", {"keep_ratio": 0.05, "levels": 4})),
          ("dhq p=0.01 L=8 tree", ("dhq", {"keep_ratio": 0.01, "levels": 8, "split": "tree"})),
          ("qsgd s=16", ("qsgd", {"qsgd_levels": 16}))]


def inputs(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    from fedsim.models.networks import build_model

    rng = np.random.default_rng(seed)
    shapes = {k: tuple(v.shape) for k, v in build_model("ddpm-small", (1, 16, 16), 10).state_dict().items()}
    return {"tensor": {"u": (0.01 * rng.standard_t(3, size=4_000_000)).astype(np.float32)},
            "ddpm-small": {k: (0.01 * rng.standard_t(3, size=s)).astype(np.float32) for k, s in shapes.items()}}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure(name: str, spec, tensors: dict[str, np.ndarray], repeats: int) -> dict:
    mb = sum(t.nbytes for t in tensors.values()) / 1e6
    layout = {k: (t.shape, t.dtype) for k, t in tensors.items()}
    if spec is None:
        enc_s, data = timed(lambda: b"".join(t.tobytes() for t in tensors.values()), repeats)

        def decode():
            out, off = {}, 0
            for k, (shape, dtype) in layout.items():
                n = int(np.prod(shape))
                out[k] = np.frombuffer(data, dtype, n, off).reshape(shape).copy()
                off += 4 * n
            return out
        dec_s, _ = timed(decode, repeats)
    else:
        codec = make_codec(spec[0], **spec[1])

        def encode():
            residual = {k: np.zeros_like(t) for k, t in tensors.items()} if codec.error_feedback else None
            return encode_update(codec, tensors, residual=residual, rng=np.random.default_rng(0))[0]
        enc_s, data = timed(encode, repeats)
        dec_s, _ = timed(lambda: decode_update(codec, data, layout), repeats)
    return {"codec": name, "mb": round(mb, 2), "encode_mb_s": mb / enc_s, "decode_mb_s": mb / dec_s,
            "bytes": len(data), "ratio": mb * 1e6 / len(data)}


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, what in zip(axes, ("encode_mb_s", "decode_mb_s")):
        piv = df.pivot_table(index="codec", columns="input", values=what, sort=False)
        piv.plot.barh(ax=ax)
        ax.axvline(200, color="grey", ls=":", lw=1, label="200 MB/s")
        ax.set(xscale="log", xlabel=f"{what.split('_')[0]} MB/s of float32 (one core, median)", ylabel="")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/compression")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for input_name, tensors in inputs().items():
        for name, spec in CODECS:
            row = {"input": input_name, **measure(name, spec, tensors, args.repeats)}
            rows.append(row)
            print(f"{input_name:11s} {name:22s} encode {row['encode_mb_s']:8.1f} MB/s  "
                  f"decode {row['decode_mb_s']:8.1f} MB/s  {row['bytes']:>10,d} B  ({row['ratio']:.1f}x)", flush=True)
    df = pd.DataFrame(rows)
    base = df[df.codec.str.startswith("none")].set_index("input").encode_mb_s
    df["encode_vs_baseline"] = df.encode_mb_s / df.input.map(base)
    df = df[["codec", "input", "mb", "encode_mb_s", "decode_mb_s", "encode_vs_baseline", "bytes", "ratio"]]
    df.round(4).to_csv(out / "codec_throughput.csv", index=False)
    plot(df, out / "codec_throughput.png")
    print(f"wrote {out / 'codec_throughput.csv'} and codec_throughput.png")
    return 0


if __name__ == "__main__":
    if hasattr(os, "sched_setaffinity"):  # one core (not when imported, e.g. by the tests)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    sys.exit(main())
