"""Top-k selection: sparsejax's sort-free top-k against argsort (what JaxPruner does), time and memory.

Run from the repository root: ``python -m benchmarks.topk`` (writes the "Top-k selection (issue 2)"
section of ``benchmarks/RESULTS.md``); ``--sizes 1000000`` for a quick look.

Cases: per tensor, N float32 scores with k = N/2; global, the 21 kernels of a CIFAR ResNet-18
(11.16M weights) with k = half of them. Methods, all jitted with a traced k:

- ``sparsejax``: ``topk.mask`` / ``topk.global_masks``.
- ``argsort+scatter``: ``jnp.argsort(-scores)`` (stable: ties by lower index), then the first k
  positions of the order scattered into a bool mask (global: on the concatenation, split back).
- ``argsort threshold``: JaxPruner's unstructured rule: the k-th score of the argsort order is the
  threshold; ties at the threshold kept up to its flat index.

Every case runs in its own subprocess, so that its peak memory is its own. Scores are made inside
that process by an elementwise integer hash of the flat index (one fused loop, no temporaries), so
making them does not raise the high-water mark. After compiling and one warm-up run, the kernel's
peak-RSS counter is reset (``/proc/self/clear_refs``) and one run is measured: "peak extra" is the
high-water mark minus the resident size before the run, i.e. the memory the selection needs beyond
its inputs (output mask included). XLA's own static estimate (``memory_analysis()``: temporaries
plus output) is shown next to it. Times are the median of a few runs after the warm-up.
Every mask is checked to have exactly k ones, and all methods must give the same mask (a hash of
the packed bits is compared across processes).

``--vs-sum`` (issue 14) times instead ``topk.mask`` against one ``jnp.sum`` over the same N float32
scores (k = N/2, both jitted and warm, interleaved in one process per size, median of the runs;
writes the "Top-k vs one sum pass (issue 14)" section), with the 1-minute load average
(``os.getloadavg()``) before and after each size's runs. ``--sizes 1000000 --no-write`` for a look.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = (1_000_000, 10_000_000, 100_000_000)
METHODS = ("sparsejax", "argsort+scatter", "argsort threshold")
GLOBAL = "resnet18"


def resnet18_kernel_shapes() -> list[tuple[int, ...]]:
    """HWIO kernels of the CIFAR ResNet-18 (3×3 stem, 4 stages of 2 basic blocks, 1×1 shortcuts)."""
    shapes, c_in = [(3, 3, 3, 64)], 64
    for width in (64, 128, 256, 512):
        for _ in range(2):
            shapes += [(3, 3, c_in, width), (3, 3, width, width)]
            if c_in != width:
                shapes.append((1, 1, c_in, width))
            c_in = width
    return shapes + [(512, 10)]


# ----------------------------------------------------------------------------- one case (child)


def _hashed_scores(shape, offset):
    """Pseudo-random float32 in [0, 1) from a murmur3 finalizer of the flat index (traceable)."""
    import jax
    import jax.numpy as jnp

    size = int(np.prod(shape))
    x = jax.lax.broadcasted_iota(jnp.uint32, (size,), 0) + jnp.uint32(offset)
    for shift, mult in ((16, 0x85EBCA6B), (13, 0xC2B2AE35)):
        x = (x ^ (x >> shift)) * jnp.uint32(mult)
    x = x ^ (x >> 16)
    bits = (x >> 9) | jnp.uint32(0x3F800000)  # [1, 2) with 23 random mantissa bits
    return (jax.lax.bitcast_convert_type(bits, jnp.float32) - 1.0).reshape(shape)


def _hwm_and_rss_kib() -> tuple[int, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def _run_case(method: str, case: str, reps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from sparsejax import topk

    hashed_scores = _hashed_scores

    def argsort_order(flat):
        return jnp.argsort(-flat, stable=True)

    def by_scatter(flat, k):
        order = argsort_order(flat)
        return jnp.zeros(flat.shape, bool).at[order].set(jnp.arange(flat.size) < k)

    def by_threshold(flat, k):
        index = argsort_order(flat)[jnp.maximum(k, 1) - 1]
        threshold = flat[index]
        return (flat > threshold) | ((flat == threshold) & (jnp.arange(flat.size) <= index))

    baseline = {"argsort+scatter": by_scatter, "argsort threshold": by_threshold}
    if case == GLOBAL:
        shapes = resnet18_kernel_shapes()
        offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
        scores = jax.jit(lambda: [hashed_scores(s, int(o)) for s, o in zip(shapes, offsets)])()
        n = int(offsets[-1])
        if method == "sparsejax":
            select = jax.jit(topk.global_masks)
        else:
            def select(leaves, k):
                flat = baseline[method](jnp.concatenate([x.reshape(-1) for x in leaves]), k)
                return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]
            select = jax.jit(select)
    else:
        n = int(case)
        scores = jax.jit(lambda: hashed_scores((n,), 0))()
        if method == "sparsejax":
            select = jax.jit(topk.mask)
        else:
            select = jax.jit(baseline[method])
    jax.block_until_ready(scores)
    k = n // 2
    compiled = select.lower(scores, k).compile()
    analysis = compiled.memory_analysis()
    xla_extra = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) if analysis else None

    def run():
        return jax.block_until_ready(compiled(scores, k))

    # Memory of the first run (it is already compiled): freed memory is returned to the system first,
    # so that the run cannot reuse pages that are resident already, then the peak counter is reset.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _, rss_before = _hwm_and_rss_kib()
    start = time.perf_counter()
    out = run()
    first = time.perf_counter() - start
    hwm_after, _ = _hwm_and_rss_kib()
    leaves = jax.tree.leaves(out)
    kept = sum(int(jnp.sum(x, dtype=jnp.int32)) for x in leaves)
    digest = hashlib.sha1(b"".join(np.packbits(np.asarray(x).reshape(-1)).tobytes()
                                   for x in leaves)).hexdigest()
    del out, leaves
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"method": method, "case": case, "n": n, "k": k, "kept": kept, "digest": digest,
            "seconds": statistics.median(times or [first]), "times": times, "first": first,
            "peak_extra_bytes": (hwm_after - rss_before) * 1024, "xla_extra_bytes": xla_extra,
            "scores_bytes": 4 * n, "load": os.getloadavg()[0]}


def _run_vs_sum(case: str, reps: int) -> dict:
    """``topk.mask(scores, N/2)`` and ``jnp.sum(scores)`` on the same N scores, interleaved."""
    import jax
    import jax.numpy as jnp

    from sparsejax import topk

    n = int(case)
    scores = jax.block_until_ready(jax.jit(lambda: _hashed_scores((n,), 0))())
    k = n // 2
    calls = {"topk": (jax.jit(topk.mask), (scores, k)), "sum": (jax.jit(jnp.sum), (scores,))}
    for fn, call_args in calls.values():
        for _ in range(2):  # compile, then one warm run
            jax.block_until_ready(fn(*call_args))
    load_before = os.getloadavg()[0]
    times = {name: [] for name in calls}
    for _ in range(reps):
        for name, (fn, call_args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*call_args))
            times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()[0]
    out = calls["topk"][0](scores, k)
    threshold = jnp.min(jnp.where(out, scores, jnp.inf))
    return {"case": case, "n": n, "k": k, "reps": reps,
            "kept": int(jnp.sum(out, dtype=jnp.int32)),
            "tie_broken": int(jnp.sum(scores >= threshold, dtype=jnp.int32)) > k,
            "topk_seconds": statistics.median(times["topk"]),
            "sum_seconds": statistics.median(times["sum"]),
            "load_before": load_before, "load_after": load_after}


def _vs_sum_reps(n: int) -> int:
    return 51 if n <= 1_000_000 else (21 if n <= 10_000_000 else 7)


def _vs_sum_line(r: dict) -> str:
    if "error" in r:
        return f"| {_label(r['case'])} | failed: {r['error']} | | | | | |"
    return (f"| {_label(r['case'])} | {r['topk_seconds'] * 1e3:.2f} | {r['sum_seconds'] * 1e3:.3f} | "
            f"{r['topk_seconds'] / r['sum_seconds']:.1f}× | {r['reps']} | "
            f"{'yes' if r['kept'] == r['k'] else 'NO'}{', tie broken' if r['tie_broken'] else ''} | "
            f"{r['load_before']:.1f} → {r['load_after']:.1f} |")


def _vs_sum(sizes: list[int], write: bool) -> None:
    started = time.perf_counter()
    lines = ["| scores | top-k (ms) | sum (ms) | top-k / sum | runs | exact k | load |",
             "|---|---:|---:|---:|---:|:-:|---:|"]
    for n in sizes:
        lines.append(_vs_sum_line(_child("vs-sum", str(n), _vs_sum_reps(n))))
        print(lines[-1], flush=True)
    body = (
        "\n".join(lines) + "\n\n"
        "`sparsejax.topk.mask(scores, k)` with k = N/2 (traced) against one `jnp.sum(scores)` pass "
        "over the same N float32 scores, both jitted, compiled and run once before timing; the two "
        "interleaved in one process per size; times are medians of the runs shown. \"tie broken\": "
        "the k-th score is tied across the cut, so the tie-break ran too (one index pass over all "
        "scores, one over a block; hashed scores have 23 random bits, so ties are the rule at "
        "100M). Load: 1-minute load "
        f"average before → after the size's timed runs ({os.cpu_count()} CPU cores); total "
        f"{time.perf_counter() - started:.0f} s.")
    print(body)
    if write:
        from benchmarks.results import write_section
        write_section("Top-k vs one sum pass (issue 14)", body)


# ----------------------------------------------------------------------------- driver (parent)


def _reps(case: str, method: str) -> int:
    """Timed runs after the first one (which is measured for memory and serves as warm-up)."""
    n = 11_164_352 if case == GLOBAL else int(case)
    if method == "sparsejax":
        return 3 if n >= 100_000_000 else 5
    return 0 if n >= 100_000_000 else (2 if n >= 10_000_000 else 5)


def _child(method: str, case: str, reps: int | None = None) -> dict:
    reps = _reps(case, method) if reps is None else reps
    command = [sys.executable, "-m", "benchmarks.topk", "--child", method, case, str(reps)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"method": method, "case": case, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(n_bytes) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def _label(case: str) -> str:
    return "ResNet-18 global (11.16M)" if case == GLOBAL else f"{int(case) / 1e6:g}M"


def _extrapolated(results: list[dict], method: str, n: int) -> float | None:
    """Seconds for n scores from the largest smaller measured size, scaled as N log N."""
    done = [r for r in results if r["method"] == method and r["case"] != GLOBAL and "seconds" in r
            and int(r["case"]) < n]
    if not done:
        return None
    r = max(done, key=lambda r: int(r["case"]))
    m = int(r["case"])
    return r["seconds"] * (n * np.log(n)) / (m * np.log(m))


def _table(results: list[dict]) -> str:
    lines = ["| scores | method | time (s) | × sparsejax's time | peak extra RSS | XLA temp+out | "
             "exact k | same mask | load |",
             "|---|---|---:|---:|---:|---:|:-:|:-:|---:|"]
    by_case: dict[str, dict[str, dict]] = {}
    for r in results:
        by_case.setdefault(r["case"], {})[r["method"]] = r
    for case, rows in by_case.items():
        ours = rows.get("sparsejax", {})
        for method in METHODS:
            r = rows.get(method)
            if r is None:
                continue
            if "error" in r or "skipped" in r:
                why = f"failed: {r['error']}" if "error" in r else r["skipped"]
                lines.append(f"| {_label(case)} | {method} | {why} | | | | | | |")
                continue
            ratio = r["seconds"] / ours["seconds"] if "seconds" in ours else float("nan")
            lines.append(
                f"| {_label(case)} | {method} | {r['seconds']:.3f} | {ratio:.1f} | "
                f"{_mib(r['peak_extra_bytes'])} ({r['peak_extra_bytes'] / r['scores_bytes']:.2f}× scores) | "
                f"{_mib(r['xla_extra_bytes'])} | {'yes' if r['kept'] == r['k'] else 'NO'} | "
                f"{'yes' if r['digest'] == ours.get('digest') else 'NO'} | {r['load']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--no-global", action="store_true")
    parser.add_argument("--argsort-100m", action="store_true",
                        help="also run the argsort baselines at >= 100M scores (minutes per run)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    parser.add_argument("--vs-sum", action="store_true",
                        help="time topk.mask as a multiple of one jnp.sum over the same scores")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "CASE", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, case, reps = args.child
        run = _run_vs_sum if method == "vs-sum" else lambda c, r: _run_case(method, c, r)
        print(json.dumps(run(case, int(reps))))
        return
    if args.vs_sum:
        _vs_sum(args.sizes, not args.no_write)
        return

    load_before = os.getloadavg()
    started = time.perf_counter()
    cases = [str(n) for n in args.sizes] + ([] if args.no_global else [GLOBAL])
    results = []
    for case in cases:
        for method in METHODS:
            n = 0 if case == GLOBAL else int(case)
            if n >= 100_000_000 and method != "sparsejax" and not args.argsort_100m:
                guess = _extrapolated(results, method, n)
                about = f" (≈ {guess:.0f} s per run, N log N from the largest size run)" if guess else ""
                r = {"method": method, "case": case,
                     "skipped": f"not run{about}; `--argsort-100m` runs it once"}
            else:
                r = _child(method, case)
            results.append(r)
            shown = (f"{r['seconds']:.3f} s, peak extra {_mib(r['peak_extra_bytes'])}, "
                     f"kept {r['kept']}/{r['k']}, load {r['load']:.1f}") if "seconds" in r else r.get("error", r.get("skipped"))
            print(f"{_label(case):>26}  {method:<18} {shown}", flush=True)
    load_after = os.getloadavg()
    body = (
        f"{_table(results)}\n\n"
        "k = half of the scores, traced (one compile serves every k); everything jitted and compiled "
        "before timing. Time: median of the runs after the first (sparsejax 5, or 3 at 100M; argsort "
        "5 at 1M, 2 at 10M and global; at 100M, when run, the first run alone). Peak extra RSS: "
        "resident high-water mark during the first run minus the resident size just before it, "
        "each case in its own process (scores excluded, output mask included); it is the honest "
        "number, since XLA's static `memory_analysis()` (temporaries + output, shown too) does not see "
        "the buffers the CPU sort allocates for itself. Same mask: bit-identical to sparsejax's mask. "
        "Load: 1-minute load average (`os.getloadavg()`) at the end of the case's runs.\n\n"
        f"{os.cpu_count()} CPU cores shared with other users: load average {load_before[0]:.1f} "
        f"before and {load_after[0]:.1f} after; total {time.perf_counter() - started:.0f} s."
    )
    print(body)
    if not args.no_write:
        from benchmarks.results import write_section
        write_section("Top-k selection (issue 2)", body)


if __name__ == "__main__":
    main()
