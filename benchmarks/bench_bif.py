"""Same BIF computation through sbif_dsl and through devinterp, in one process: wall times, ratio, agreement,
achieved FLOP/s against the matmul ceiling, and (with --memory) peak RSS of class-level token BIF.

Run by hand, not in CI (see benchmarks/README.md):

    bash benchmarks/setup_devinterp.sh                       # once: side env with devinterp 2.0.1
    benchmarks/.venv-devinterp/bin/python benchmarks/bench_bif.py --workloads a,b,c
    benchmarks/.venv-devinterp/bin/python benchmarks/bench_bif.py --quick --device cuda
    .venv/bin/python benchmarks/bench_bif.py --memory         # memory check only (no devinterp needed)

Sign convention: sbif_dsl reports BIF = -Corr (negative = helpful); devinterp returns +Corr. Agreement is the
Pearson correlation between our -(-Corr) and devinterp's +Corr over all off-diagonal pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's progress bars
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import devinterp_side  # noqa: E402
import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from workloads import RESULTS, WORKLOADS, Workload  # noqa: E402

from sbif_dsl.influence.bif import bif_matrices, class_bif  # noqa: E402
from sbif_dsl.runtime import cpu_threads_for, functional_loss, replicate_loss  # noqa: E402
from sbif_dsl.sampling import run_chains  # noqa: E402
from sbif_dsl.tokens import STRUCTURAL_DEFAULT, ByteTokenizer, Induction, class_masks  # noqa: E402

# ----------------------------------------------------------------------------- FLOPs and the matmul ceiling


def count_flops(w: Workload, device: str) -> dict[str, int]:
    """FLOPs of one SGLD step of one chain (forward + backward of the minibatch loss) and of one evaluation of
    the tracked set, counted by FlopCounterMode. Attention runs through the math backend while counting, so its
    matmuls are counted too (the CPU flash kernel has no FLOP formula); like FlopCounterMode's own attention
    formula, that counts the full T×T scores, masked half included."""
    model = w.model.to(device)
    params = dict(model.named_parameters())
    b = w.sampler.batch_size or w.train.shape[0]
    x, y = w.train[:b].to(device), w.train_targets[:b].to(device)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as step:
            loss = w.loss(model(x), y).mean()
            torch.autograd.grad(loss, list(params.values()))
        # forward only; not under no_grad, where FlopCounterMode's module tracker trips over parameter views
        with FlopCounterMode(display=False) as fwd:
            w.loss(model(w.tracked.to(device)), w.tracked_targets.to(device))
        with FlopCounterMode(display=False) as one:
            w.loss(model(w.train[:1].to(device)), w.train_targets[:1].to(device))
    return {"step": step.get_total_flops(), "eval": fwd.get_total_flops(), "forward_one": one.get_total_flops()}


def sampling_flops(w: Workload, f: dict[str, int], init_samples: int) -> int:
    """Everything the sampler computes: the init loss over init_samples, every step, every tracked evaluation."""
    cfg = w.sampler
    return init_samples * f["forward_one"] + cfg.chains * (cfg.total_steps * f["step"] + cfg.draws * f["eval"])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(m: int, k: int, n: int, device: str, seconds: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a plain torch.matmul (m×k)@(k×n) in dtype, best of repeated timings over ~`seconds`."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    _sync(device)
    reps = 1
    while True:  # calibrate the number of repetitions to ~0.1 s
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        _sync(device)
        dt = time.perf_counter() - t
        if dt > 0.1:
            break
        reps *= 2
    best, deadline = dt / reps, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * m * k * n / best


def ceiling_shape(w: Workload) -> tuple[int, int, int]:
    """The largest GEMM of the tracked evaluation: (tracked tokens × d_model) @ (d_model × vocab) for the
    language models, (items × hidden) @ (hidden × features) for the toy."""
    if w.per_token:
        d_model, vocab = w.model.unembed.weight.shape[1], w.model.unembed.weight.shape[0]
        return w.tracked.numel(), d_model, vocab
    last = w.model.layers[-1].weight  # (out, in)
    return w.tracked.shape[0], last.shape[1], last.shape[0]


# ----------------------------------------------------------------------------- our side


def run_ours(w: Workload, device: str, precision: str = "float32") -> dict:
    """sbif_dsl's path: run_chains as the sample stage calls it (the Runtime's loss function and thread policy,
    one model replica per CPU worker thread, the spec's precision) + the BIF from the traces."""
    model = w.model.to(device)
    params0 = {k: v.detach() for k, v in model.named_parameters()}
    train = (w.train.to(device), w.train_targets.to(device))
    tracked = [(w.tracked.to(device), w.tracked_targets.to(device))]
    cfg = replace(w.sampler, precision=precision)
    t0 = time.perf_counter()
    with cpu_threads_for(model, cfg.chains, cfg.batch_size or train[0].shape[0], train[0][0]):  # as Runtime does
        res = run_chains(
            functional_loss(model, w.loss),
            params0,
            train,
            tracked,
            cfg,
            seed=0,
            replicate=replicate_loss(model, w.loss),
        )
    t1 = time.perf_counter()
    traces = res.traces[0]  # (chains, draws, n[, T])
    flat = traces.flatten(2).to(device)  # (chains, draws, n·T): token × token, the same matrix devinterp returns
    _, corr = bif_matrices(flat, flat)  # -Corr
    corr = corr.cpu()
    t2 = time.perf_counter()
    return {"sample_s": t1 - t0, "bif_s": t2 - t1, "traces": traces, "corr": corr}


# ----------------------------------------------------------------------------- agreement


def pearson_offdiag(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.to(torch.float64), b.to(torch.float64)
    keep = ~torch.eye(a.shape[0], dtype=torch.bool)
    x, y = a[keep], b[keep]
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


def token_matrix(corr_4d) -> torch.Tensor:
    """devinterp's (n, n, T, T) token correlations as one (n·T, n·T) matrix in our (sample, position) order."""
    t = torch.as_tensor(corr_4d)
    n, _, T, _ = t.shape
    return t.permute(0, 2, 1, 3).reshape(n * T, n * T)


def _corr(traces: torch.Tensor) -> torch.Tensor:
    """+Corr between all tracked units (samples, or tokens) of (chains, draws, n[, T]) traces, chains pooled."""
    flat = traces.flatten(2)
    return -bif_matrices(flat, flat)[1]


def agreement(w: Workload, ours: dict, theirs: devinterp_side.DevinterpRun) -> dict:
    """Pearson between the two normalized BIFs (ours -BIF = +Corr against devinterp's +Corr), off-diagonal, at
    the token, sequence and class level. The split-half rows say how far each estimate is from itself: chains
    [0, C/2) against [C/2, C) of one tool ("ours_halves", "devinterp_halves") and across tools ("cross_halves",
    our first half against devinterp's second). Cross ≈ within means the tools differ only by Monte-Carlo noise."""
    out = {}
    ours_pos = -ours["corr"]  # -BIF = +Corr, devinterp's sign
    if w.per_token:
        tok_theirs = token_matrix(theirs.corr)
        out["pearson_token"] = pearson_offdiag(ours_pos, tok_theirs)
        seq_o, seq_t = ours["traces"].mean(-1), theirs.traces.mean(-1)  # (chains, draws, n)
        out["pearson_sequence"] = pearson_offdiag(_corr(seq_o), _corr(seq_t))
        names, masks = class_masks(w.tracked, {**STRUCTURAL_DEFAULT, "induction": Induction()}, ByteTokenizer())
        flat_masks = masks.flatten(1)  # (classes, n·(T-1))
        keep = flat_masks.sum(1) > 0
        cls_o = -class_bif(ours["traces"].flatten(2), flat_masks[keep])[1]
        m = flat_masks[keep].to(torch.float64)
        sizes = m.sum(1)
        cls_t = (m @ tok_theirs.to(torch.float64) @ m.T) / (sizes[:, None] * sizes[None, :])  # block means
        out["pearson_class"] = float(torch.corrcoef(torch.stack([cls_o.flatten(), cls_t.flatten()]))[0, 1])
        out["classes"] = [n for n, k in zip(names, keep.tolist(), strict=True) if k]
        level, o, t = "sequence", seq_o, seq_t
    else:
        out["pearson_sample"] = pearson_offdiag(ours_pos, torch.as_tensor(theirs.corr).reshape(ours_pos.shape))
        level, o, t = "sample", ours["traces"], theirs.traces
    h = o.shape[0] // 2
    if h:
        out[f"{level}_ours_halves"] = pearson_offdiag(_corr(o[:h]), _corr(o[h:]))
        out[f"{level}_devinterp_halves"] = pearson_offdiag(_corr(t[:h]), _corr(t[h:]))
        out[f"{level}_cross_halves"] = pearson_offdiag(_corr(o[:h]), _corr(t[h:]))
    return out


# ----------------------------------------------------------------------------- one workload


def run_workload(key: str, args) -> dict:
    w = WORKLOADS[key]()
    changes = {}
    if args.chains:
        changes["chains"] = args.chains
    if args.draws:
        changes["draws"] = args.draws
    if args.quick:
        changes = {"chains": min(w.sampler.chains, 4), "draws": 25, "burn_in": min(w.sampler.burn_in, 10)} | changes
    w = w.with_sampler(**changes) if changes else w
    cfg = w.sampler
    dev = args.device
    print(f"\n=== ({key}) {w.title}", flush=True)
    print(f"    {w.notes}; {sum(p.numel() for p in w.model.parameters())} parameters", flush=True)
    print(
        f"    sampler {cfg.method}: eps {cfg.eps:g}, nbeta {cfg.nbeta:.4g}, gamma {cfg.gamma:g}, chains {cfg.chains}, "
        f"draws {cfg.draws}, burn-in {cfg.burn_in}, batch {cfg.batch_size}; tracked {tuple(w.tracked.shape)}",
        flush=True,
    )
    flops = count_flops(w, dev)
    shape = ceiling_shape(w)
    row: dict = {"workload": key, "title": w.title, "sampler": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    row["flops"] = flops
    row["ceiling_shape"] = shape
    ceil_before = matmul_rate(*shape, dev)

    # Alternate the sides `repeat` times; the median of each side's times goes into the ratios, so a change of
    # machine load during the run hits every side alike. Results are deterministic: the first run's are kept.
    ours_sides = {f"ours_{p}": p for p in args.precision}  # e.g. ours_float32, ours_bfloat16
    results: dict = {}
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in [*ours_sides, "devinterp"]}
    for _ in range(args.repeat):
        for side, precision in ours_sides.items():
            o = run_ours(w, dev, precision)
            times[side].append((o["sample_s"], o["bif_s"]))
            results.setdefault(side, o)
            print(f"    sbif_dsl {precision:8s}: sample {o['sample_s']:7.2f} s + BIF {o['bif_s']:5.2f} s", flush=True)
        if args.baseline == "devinterp":
            t = devinterp_side.run(w, dev, "token" if w.per_token else "sequence")
            times["devinterp"].append((t.sample_s, t.bif_s))
            results.setdefault("devinterp", t)
            print(f"    devinterp        : sample {t.sample_s:7.2f} s + BIF {t.bif_s:5.2f} s", flush=True)
    for side, ts in times.items():
        if ts:
            sample_s, bif_s = (statistics.median(v) for v in zip(*ts, strict=True))
            row[side] = {"sample_s": sample_s, "bif_s": bif_s, "total_s": sample_s + bif_s, "runs": ts}
    if args.repeat > 1:
        medians = ", ".join(f"{side} {row[side]['sample_s']:.2f} + {row[side]['bif_s']:.2f} s" for side in results)
        print(f"    medians of {args.repeat}: {medians}", flush=True)
    ceil_after = matmul_rate(*shape, dev)
    peak = matmul_rate(2048, 2048, 2048, dev)
    row["matmul_flops_per_s"] = {
        "similar_shape": (ceil_before + ceil_after) / 2,
        "before": ceil_before,
        "after": ceil_after,
        "square_2048": peak,
        "similar_shape_bfloat16": matmul_rate(*shape, dev, dtype=torch.bfloat16),
    }
    ceiling = row["matmul_flops_per_s"]["similar_shape"]
    n_train = w.train.shape[0]
    init_samples = {side: n_train for side in ours_sides}  # our init loss: the whole training set once
    init_samples["devinterp"] = 32 * (cfg.batch_size or n_train) * cfg.chains  # num_init_loss_batches=32 per chain
    per_draw = cfg.chains * (flops["step"] * cfg.steps_between_draws + flops["eval"])
    print(
        f"    FLOPs per draw (all chains) {per_draw / 1e9:.3g} G; float32 matmul {shape[0]}x{shape[1]}x{shape[2]}: "
        f"{ceiling / 1e9:.1f} GFLOP/s (2048³: {peak / 1e9:.1f})",
        flush=True,
    )
    for side in results:
        r = row[side]
        r["flops"] = sampling_flops(w, flops, init_samples[side])
        r["flops_per_s"] = r["flops"] / r["sample_s"]
        r["fraction_of_ceiling"] = r["flops_per_s"] / ceiling
        line = f"    {side:15s}: {r['flops_per_s'] / 1e9:6.1f} GFLOP/s = {r['fraction_of_ceiling']:.0%} of the ceiling"
        if side.endswith("bfloat16"):  # its own ceiling: a bfloat16 matmul of the same shape
            bf16 = row["matmul_flops_per_s"]["similar_shape_bfloat16"]
            r["fraction_of_bfloat16_ceiling"] = r["flops_per_s"] / bf16
            line += f" ({r['fraction_of_bfloat16_ceiling']:.0%} of a bfloat16 matmul's {bf16 / 1e9:.1f} GFLOP/s)"
        print(line, flush=True)
    if "devinterp" in results:
        theirs = results["devinterp"]
        d = row["devinterp"]
        for side in ours_sides:
            o = row[side]
            o["ratio_total"] = o["total_s"] / d["total_s"]
            o["ratio_sample"] = o["sample_s"] / d["sample_s"]
            o["agreement"] = agreement(w, results[side], theirs)
            agree = ", ".join(f"{k} {v:.3f}" for k, v in o["agreement"].items() if isinstance(v, float))
            print(
                f"    {side} / devinterp: total {o['ratio_total']:.3f}, sampling {o['ratio_sample']:.3f}; "
                f"Pearson {agree}",
                flush=True,
            )
    if len(ours_sides) > 1:  # the same chains (same seed) in two precisions: what rounding alone changes
        (s1, r1), (s2, r2) = [(side, results[side]) for side in ours_sides][:2]
        row["precision_agreement"] = {
            "token": pearson_offdiag(-r1["corr"], -r2["corr"]),
            "max_abs_trace_diff": float((r1["traces"] - r2["traces"]).abs().max()),
            "mean_abs_trace_diff": float((r1["traces"] - r2["traces"]).abs().mean()),
            "mean_trace_std_over_draws": float(r1["traces"].std(dim=1).mean()),
        }
        pa = row["precision_agreement"]
        print(
            f"    {s1} vs {s2} (same seed): Pearson {pa['token']:.5f}; traces differ"
            f" by {pa['mean_abs_trace_diff']:.2g} "
            f"on average (their spread over draws: {pa['mean_trace_std_over_draws']:.2g})",
            flush=True,
        )
    return row


# ----------------------------------------------------------------------------- memory


def peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM of /proc/self/status (Linux). Not ru_maxrss, which a
    child inherits from its parent across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def memory_child(n_seq: int, context: int, chains: int, draws: int) -> None:
    """Our path for class-level token BIF: run_chains with per-token traces, then class_bif. Prints JSON."""
    from sbif_dsl.data.language import make_language_dataset
    from sbif_dsl.models.transformer import next_token_loss
    from sbif_dsl.sampling import SGLDConfig

    torch.manual_seed(0)
    ds = make_language_dataset(n_train=256, n_query=n_seq, context=context, seed=0)
    tokens, tracked = ds.train.inputs, ds.queries["query"].inputs
    # A bigram LM (embedding → unembedding): the memory of this path is the trace buffer, the chunked evaluation
    # and class_bif, not the model; a cheap model keeps 256 × 512 tokens × 800 draws at a minute of CPU.
    model = torch.nn.Sequential(torch.nn.Embedding(256, 16), torch.nn.Linear(16, 256))
    params0 = {k: v.detach() for k, v in model.named_parameters()}

    loss_fn = functional_loss(model, next_token_loss)
    cfg = SGLDConfig(eps=1e-4, gamma=1000.0, nbeta=9.23, chains=chains, draws=draws, batch_size=8)
    base = peak_rss()
    t0 = time.perf_counter()
    res = run_chains(loss_fn, params0, (tokens, tokens), [(tracked, tracked)], cfg, seed=0)
    after_sampling = peak_rss()
    t1 = time.perf_counter()
    _, masks = class_masks(tracked, {**STRUCTURAL_DEFAULT, "induction": Induction()}, ByteTokenizer())
    cov, corr = class_bif(res.traces[0].flatten(2), masks.flatten(1))
    t2 = time.perf_counter()
    print(
        json.dumps(
            {
                "tokens": tracked.shape[0] * (context - 1),
                "pooled_draws": chains * draws,
                "classes": masks.shape[0],
                "trace_bytes": res.traces[0].numel() * res.traces[0].element_size(),
                "rss_at_start": base,
                "peak_rss_after_sampling": after_sampling,
                "peak_rss": peak_rss(),
                "sample_s": t1 - t0,
                "class_bif_s": t2 - t1,
            }
        )
    )


def run_memory(args) -> dict:
    n_seq, context, chains, draws = 256, 512, 4, 200
    if args.quick:
        draws = 20
    cmd = [sys.executable, __file__, "--memory-child", f"{n_seq},{context},{chains},{draws}"]
    print(
        f"\n=== memory: class-level token BIF, {n_seq} sequences × {context} tokens × {chains * draws} draws",
        flush=True,
    )
    out = subprocess.run(
        cmd,
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    m = json.loads(out.stdout.strip().splitlines()[-1])
    tokens = m["tokens"]
    m["devinterp_token_matrix_bytes"] = tokens * tokens * 4  # compute_bif(token): np.empty((n, n, T, T), float32)
    print(
        f"    ours: peak RSS {m['peak_rss'] / 2**30:.2f} GiB (traces {m['trace_bytes'] / 2**30:.2f} GiB; sampling "
        f"{m['sample_s']:.1f} s, class_bif {m['class_bif_s']:.1f} s over {m['classes']} classes)",
        flush=True,
    )
    print(
        f"    devinterp compute_bif(token) would allocate its (n, n, T, T) float32 result: "
        f"({n_seq}·{context - 1})² × 4 B = {m['devinterp_token_matrix_bytes'] / 2**30:.1f} GiB",
        flush=True,
    )
    return m


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c (default: a,b,c)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument("--quick", action="store_true", help="4 chains × 25 draws (and a short memory run): a smoke test")
    ap.add_argument("--chains", type=int, help="override every workload's chains")
    ap.add_argument("--draws", type=int, help="override every workload's draws")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the two sides this many times (medians)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads on CPU (default: torch's default)")
    ap.add_argument(
        "--baseline",
        choices=["devinterp", "none"],
        default=None,
        help="devinterp (default when importable) or none (our side only)",
    )
    ap.add_argument(
        "--precision",
        default="float32,bfloat16",
        help="our side's sampler.precision values, comma-separated (default: float32,bfloat16)",
    )
    ap.add_argument("--memory", action="store_true", help="also run the memory check (peak RSS, subprocess)")
    ap.add_argument("--memory-only", action="store_true", help="run only the memory check")
    ap.add_argument("--out", type=Path, help="write all numbers as JSON here (default: benchmarks/results/)")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.precision = [p.strip() for p in args.precision.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*(int(v) for v in args.memory_child.split(",")))
        return
    version = devinterp_side.available()
    if args.baseline is None:
        args.baseline = "devinterp" if version else "none"
    if args.baseline == "devinterp" and not version:
        sys.exit("devinterp is not importable here: run `bash benchmarks/setup_devinterp.sh` and use its python")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda but torch.cuda.is_available() is False")
    env = {
        "torch": torch.__version__,
        "devinterp": version,
        "python": platform.python_version(),
        "device": args.device if not args.device.startswith("cuda") else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average_start": os.getloadavg(),
    }
    print(
        f"torch {env['torch']}, devinterp {version}, device {env['device']}, threads {env['threads']}, "
        f"load average {env['load_average_start'][0]:.2f}",
        flush=True,
    )
    rows = []
    if not args.memory_only:
        for key in args.workloads.split(","):
            rows.append(run_workload(key.strip(), args))
    mem = run_memory(args) if (args.memory or args.memory_only) else None
    env["load_average_end"] = os.getloadavg()
    out = args.out or RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "workloads": rows, "memory": mem}, indent=1, default=str))
    print(f"\nload average at the end {env['load_average_end'][0]:.2f}; numbers in {out}")


if __name__ == "__main__":
    main()
