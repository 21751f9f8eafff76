"""LLM classification modes compared: ``paper`` (the study's free generation) vs ``choice`` vs ``score``.

One vLLM engine (in this process; engine core and workers are children), one test sample of the
study's protocol (fixed seed), per mode: accuracy, parse rate, prompt and generated tokens per text,
wall time and an energy estimate (``EstimateMeter``: CPU time of this process tree x W/core + RSS x
W/GB, sampled every second). ``score+calibrated`` reuses the ``score`` run with a per-label bias
fitted on training texts (minus each label's mean log-probability). With ``--serve``, the same spec
also runs as a Ray Serve app and the same texts go over HTTP; its throughput is reported relative to
the in-process engine on the same prompts.

Two cache settings (``--cache``, default both). In both, the prefix cache is emptied before each mode:
the modes run on the same test texts and their prompts share their first blocks (``choice`` and
``score`` prompts extend the ``paper`` prompt), so a mode run after another would find the test texts
cached and look cheaper (before 2026-12-04 the ``warm`` runs did: see benchmarks/RESULTS.md).
- ``cold``: emptied again after a warm-up on a few training texts (grammar compilation, first shapes):
  the run's first texts prefill the instruction, and texts the engine takes in later steps find it
  cached (all texts go in at once).
- ``warm``: the engine as users run it, prefix caching on after ``--warm-texts`` training texts in the
  mode: the instruction's whole cache blocks are cached, the test texts are new to the engine. With
  SmolLM2's chat template the prompts share their first 126 tokens: blocks of 32 (``--block-size``,
  as deployments/llm-cpu.yaml) cache 96 of them; with vLLM for CPU's default of 128 none. So the two
  settings differ by one instruction's prefill, and agree within noise.
The column ``prefilled`` (tokens per text the engine computed: prompt less prefix-cache hits, from the
classifier's per-step reports) shows what the cache saved.
The targets printed: ``score`` or ``choice`` at least 3x less time than ``paper`` (all texts at once:
with an ``--in-flight`` below ``--n`` no verdict is given), and, with ``--serve``, Serve at least 0.9x
the in-process engine (``score``, warm cache) in each of ``--repeats`` repetitions, each on ``--n`` test
texts new to the engine (the in-process and the Serve engine see the same sets in the same order; before
2026-12-04 the repetitions after the first repeated the first set, which blocks of 32 then served almost
whole from the cache); ``--beside-ray`` runs the in-process engine beside an idle local Ray with Serve
started (what any Serve app runs beside its replicas), to split the gap into Ray's presence and the app's
request path; ``--bracket`` runs the in-process repetitions again after Serve (a fresh engine, the same
warm-up), so that a change in the machine's speed between the two arms shows as a difference between the
in-process runs before and after (the target is still judged against the runs before; the ratio to the
mean of both is reported beside it).
``--in-flight N`` keeps at most N texts in the engine (light load: less batching, so each decode step
costs more per token).

Usage: .venv/bin/python benchmarks/bench_llm_modes.py [--n 200] [--model prepared:smollm2] [--serve]
       [--cache cold warm] [--repeats 3] [--in-flight 16] [--beside-ray] [--bracket]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, computed_field

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._cpu import CpuByGroup  # noqa: E402
from benchmarks._out import add_out_argument, write_result  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "accuwatt-cache"
WARM_TEXTS = 8
BESIDE_RAY = "idle Ray + Serve"
"""``ServeComparison.inprocess_beside`` with ``--beside-ray`` (see `idle_ray_serve`)."""
CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),  # see llm-cpu.yaml
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    "VLLM_CACHE_ROOT": str(CACHE / "vllm"),
    "XDG_CACHE_HOME": str(CACHE / "xdg"),
    "HF_HOME": str(CACHE / "hf"),
}


def cpu_llm_spec(model_id: str, model: str, labels: list[str], **extra: Any) -> dict[str, Any]:
    """An LLMSpec dict for vLLM on CPU with this machine's settings (``CPU_ENV``); ``extra`` adds or
    overrides fields."""
    return {
        "kind": "llm",
        "id": model_id,
        "model": model,
        "labels": labels,
        "gpus_per_worker": 0,
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 2048,
        "env_vars": CPU_ENV,
        **extra,
    }


class ModeResult(BaseModel):
    mode: str
    cache: str = "cold"
    """``cold``: nothing in the prefix cache at the start; ``warm``: the instruction cached by a warm-up,
    as users run the engine; test texts new to the engine in both (see the doc)."""
    texts: int
    accuracy: float
    parsed_rate: float
    prompt_tokens_per_text: float
    generated_tokens_per_text: float
    prefilled_tokens_per_text: float | None = None
    """Prompt tokens the engine computed per text: its prompt tokens less prefix-cache hits."""
    wall_s: float
    texts_per_s: float
    energy_j: float | None
    """Estimate for the whole run (this process and its children); absent when no reading."""
    energy_source: str = "estimate"
    energy_j_per_text: float | None
    cpu_pct: float | None = None
    """CPU every process on the machine used during the texts (% of one core; the engine's share is
    this process and its children), to set beside what the engine got under Serve."""


class ServeComparison(BaseModel):
    mode: str
    cache: str
    texts: int
    """Texts per repetition; each repetition a set of its own, new to the engine (since 2026-12-04)."""
    inprocess_texts_per_s: list[float]
    """One per repetition."""
    serve_texts_per_s: list[float]
    serve_vs_inprocess_ratio: list[float]
    serve_start_s: float
    serve_meter: str = "estimate"
    """The Serve app's ``energy.meter`` (``off``: the same app without metering, to isolate its cost)."""
    serve_cpu_pct_by_kind: list[dict[str, float]] = []
    """Per repetition, the CPU each process group used while the texts went through Serve (% of one
    core; the engine core and its workers are in ``replica``): what Ray and Serve took beside it."""
    serve_cpu_top: list[list[dict[str, Any]]] = []
    """Per repetition, the processes that used the most CPU (% of one core, title)."""
    inprocess_cpu_top: list[list[dict[str, Any]]] = []
    """The same for each in-process repetition (the engine core and its workers are this process's
    children): the CPU the offline engine had to itself."""
    inprocess_after_texts_per_s: list[float] = []
    """``--bracket``: the in-process repetitions again after Serve (a fresh engine, the same warm-up)."""
    inprocess_beside: str = "nothing"
    """What ran beside the in-process engine: ``nothing``, or ``idle Ray + Serve`` (``--beside-ray``: a
    local Ray with Serve's controller and proxy, no app), which splits the gap to Serve into what Ray's
    presence costs and what the app's request path costs."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def serve_vs_bracket_ratio(self) -> list[float]:
        """``--bracket``: Serve over the mean of the in-process runs before and after it, per repetition."""
        pairs = zip(self.inprocess_texts_per_s, self.inprocess_after_texts_per_s, strict=False)
        return [s / ((b + a) / 2) for s, (b, a) in zip(self.serve_texts_per_s, pairs, strict=False)]


class BenchResult(BaseModel):
    model: str
    dataset: str
    seed: int
    n_test: int
    in_flight: int | None
    """Texts in the engine at a time (None: all submitted at once)."""
    paper_max_tokens: int
    engine_start_s: float
    modes: list[ModeResult]
    label_bias: dict[str, float]
    ratios_vs_paper: dict[str, dict[str, float]]
    """Keyed ``mode@cache``, against ``paper`` with the same cache setting."""
    serve: ServeComparison | None = None


class _Metered:
    """Reads an EstimateMeter every ``period_s`` during a block; ``joules`` after it."""

    def __init__(self, period_s: float = 1.0) -> None:
        from serve_app.energy.estimate import EstimateMeter

        self.meter = EstimateMeter(include_children=True)
        self.period_s = period_s
        self.joules: float | None = None

    def __enter__(self) -> _Metered:
        self._stop = threading.Event()
        self._r0 = self.meter.read()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self.meter.read()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        r1 = self.meter.read()
        self.joules = sum(r1.energy_j.values()) - sum(self._r0.energy_j.values())


class _Work:
    """Tokens the engine computed, from the classifier's per-step reports (its ``WorkSink``): prompt
    tokens less prefix-cache hits, and decoded tokens."""

    def __init__(self) -> None:
        self.prefill = 0
        self.decode = 0

    def __call__(self, prefill: int, decode: int) -> None:
        self.prefill += prefill
        self.decode += decode


async def _classify(
    clf: Any, texts: list[str], mode: str, in_flight: int | None, work: _Work | None = None
) -> list[Any]:
    """All texts at once (``in_flight`` None), or at most ``in_flight`` texts in the engine at a time."""
    if not in_flight:
        return list(await clf.predict(texts, mode, work))
    gate = asyncio.Semaphore(in_flight)

    async def one(text: str) -> Any:
        async with gate:
            return (await clf.predict([text], mode, work))[0]

    return list(await asyncio.gather(*(one(t) for t in texts)))


def run_mode(
    clf: Any,
    loop: asyncio.AbstractEventLoop,
    mode: str,
    texts: list[str],
    gold: list[str],
    warm: list[str],
    in_flight: int | None = None,
    cache: str = "cold",
) -> tuple[list[Any], ModeResult, list[dict[str, Any]]]:
    """One mode after a warm-up on ``warm`` (training texts: grammar compilation, first shapes, the
    instruction). The prefix cache is emptied first, so that no earlier run's test texts are cached (the
    modes' prompts share their first blocks); ``cold`` empties it again after the warm-up, ``warm`` keeps
    what the warm-up cached."""
    loop.run_until_complete(clf.reset_prefix_cache())
    if warm:  # no training texts (``--n-calibration 0``): no warm-up
        loop.run_until_complete(clf.predict(warm, mode))
    if cache == "cold":
        loop.run_until_complete(clf.reset_prefix_cache())
    with _Metered() as m:
        clock = CpuByGroup().start()
        t0 = time.perf_counter()
        work = _Work()
        preds = loop.run_until_complete(_classify(clf, texts, mode, in_flight, work))
        wall = time.perf_counter() - t0
        used = clock.stop()
    n = len(texts)
    return (
        preds,
        ModeResult(
            mode=mode,
            cache=cache,
            texts=n,
            accuracy=sum(p.label == g for p, g in zip(preds, gold, strict=True)) / n,
            parsed_rate=sum(p.parsed for p in preds) / n,
            prompt_tokens_per_text=sum(p.prompt_tokens or 0 for p in preds) / n,
            generated_tokens_per_text=sum(p.generated_tokens or 0 for p in preds) / n,
            prefilled_tokens_per_text=work.prefill / n,
            wall_s=wall,
            texts_per_s=n / wall,
            energy_j=m.joules,
            energy_j_per_text=None if m.joules is None else m.joules / n,
            cpu_pct=used["total_pct"],
        ),
        used["top"],
    )


@contextlib.contextmanager
def inprocess_engine(spec: Any, beside: bool) -> Iterator[tuple[Any, asyncio.AbstractEventLoop, float]]:
    """The offline engine, a loop to drive it and its start time (s); with ``beside``, an idle Ray +
    Serve beside it (`idle_ray_serve`). All close in reverse order, also when the engine fails to start."""
    from serve_app.classifiers.llm import build_llm_classifier

    with contextlib.ExitStack() as stack:
        if beside:
            stack.enter_context(idle_ray_serve())
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)  # after the engine's shutdown, which turns the loop once more
        t0 = time.perf_counter()
        clf = build_llm_classifier(spec)
        stack.callback(clf.close)
        start_s = time.perf_counter() - t0
        yield clf, loop, start_s


def repeat_texts(
    clf: Any, loop: asyncio.AbstractEventLoop, sets: list[list[str]], mode: str, in_flight: int | None
) -> tuple[list[float], list[list[dict[str, Any]]]]:
    """One repetition per set of texts (each new to the engine, as in Serve): texts/s and the top
    processes of each."""
    tps, tops = [], []
    for texts in sets:
        clock = CpuByGroup().start()
        t0 = time.perf_counter()
        loop.run_until_complete(_classify(clf, texts, mode, in_flight))
        tps.append(len(texts) / (time.perf_counter() - t0))
        tops.append(clock.stop()["top"])
    return tps, tops


def inprocess_again(
    spec: Any,
    sets: list[list[str]],
    gold: list[str],
    warm: list[str],
    in_flight: int | None,
    beside: bool,
) -> list[float]:
    """``--bracket``: the in-process warm ``score`` repetitions once more, on a fresh engine."""
    with inprocess_engine(spec, beside) as (clf, loop, _):
        _, res, _ = run_mode(clf, loop, "score", sets[0], gold, warm, in_flight, "warm")
        more, _ = repeat_texts(clf, loop, sets[1:], "score", in_flight)
    return [res.texts_per_s, *more]


def paper_target(
    ratios: dict[str, dict[str, float]], cache: str, in_flight: int | None, texts: int
) -> tuple[float | None, str]:
    """The faster of ``score`` and ``choice`` as times less than ``paper`` (``cache`` setting) and the
    verdict on the target of 3x at full batch: ``met`` or ``MISSED``; no verdict where neither mode ran
    (nothing was measured, which is not a miss), nor where ``--in-flight`` kept fewer than all texts in
    the engine (less batching is another workload than the target's)."""
    found = [ratios[f"{m}@{cache}"]["time_less_x"] for m in ("score", "choice") if f"{m}@{cache}" in ratios]
    if not found:
        return None, "not measured: neither score nor choice ran"
    best = max(found)
    if in_flight and in_flight < texts:
        return best, f"not judged: the target is at full batch, this run kept {in_flight} texts in the engine"
    return best, "met" if best >= 3.0 else "MISSED"


def calibrate(clf: Any, loop: asyncio.AbstractEventLoop, texts: list[str]) -> dict[str, float]:
    """Bias = minus each label's mean log-probability over (unlabelled) training texts."""
    preds = loop.run_until_complete(clf.predict(texts, "score"))
    return {lab: -sum(p.scores[lab] for p in preds) / len(preds) for lab in clf.labels}


@contextlib.contextmanager
def idle_ray_serve() -> Iterator[None]:
    """A local Ray with Serve's controller and proxy started and no app: what any Serve app runs beside
    its replicas."""
    from ray import serve

    from serve_app.replay.local import local_ray
    from tests.conftest import free_port

    with local_ray(8):
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        yield


def serve_comparison(
    spec_dict: dict[str, Any],
    sets: list[list[str]],
    mode: str,
    inproc_tps: list[float],
    inproc_top: list[list[dict[str, Any]]],
    inproc_beside: str,
    batch: int,
    concurrency: int,
    warm: list[str],
) -> ServeComparison:
    """The in-process repetitions' sets of texts over HTTP, in the same order; ``batch`` x
    ``concurrency`` texts in flight. A fresh engine, prefix caching on, warmed up on the same ``warm``
    texts as the in-process warm run."""
    from ray import serve

    from benchmarks._http import post_in_chunks
    from serve_app.app import build_app
    from serve_app.replay.local import local_ray
    from tests.conftest import free_port, wait_http

    with local_ray(8):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        t0 = time.perf_counter()
        # all texts in flight at once, as in-process: the last request waits for the whole set, so the
        # router's timeout must cover that (the default 120 s cut the last request here: 504)
        app = build_app({"classifiers": [spec_dict], "router": {"request_timeout_s": 1800}})
        serve.run(app, name="llm", route_prefix="/", blocking=False)
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=900)
        start_s = time.perf_counter() - t0
        url = f"http://127.0.0.1:{port}/v1/classify"
        body = {"model": spec_dict["id"], "mode": mode}
        if warm:
            asyncio.run(post_in_chunks(url, body, warm, len(warm), 1, 600))  # warm-up
        walls, cpu, top = [], [], []
        for texts in sets:
            clock = CpuByGroup().start()
            walls.append(asyncio.run(post_in_chunks(url, body, texts, batch, concurrency, 600)))
            used = clock.stop()
            cpu.append(used["by_kind_pct"])
            top.append(used["top"])
    tps = [len(texts) / w for texts, w in zip(sets, walls, strict=True)]
    return ServeComparison(
        mode=mode,
        cache="warm",
        texts=len(sets[0]),
        inprocess_texts_per_s=inproc_tps,
        serve_texts_per_s=tps,
        serve_vs_inprocess_ratio=[s / i for s, i in zip(tps, inproc_tps, strict=True)],
        serve_start_s=start_s,
        serve_meter=spec_dict["energy"]["meter"],
        serve_cpu_pct_by_kind=cpu,
        serve_cpu_top=top,
        inprocess_cpu_top=inproc_top,
        inprocess_beside=inproc_beside,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=str(REPO.parent / "shared" / "datasets" / "rotten_tomatoes"))
    ap.add_argument("--model", default="prepared:smollm2")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-calibration", type=int, default=100, help="training texts for the score bias")
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--paper-max-tokens", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["paper", "choice", "score"])
    ap.add_argument(
        "--in-flight",
        type=int,
        default=None,
        help="texts in the engine at a time (default: all; fewer = less batching, as under light load)",
    )
    ap.add_argument("--cache", nargs="+", choices=["cold", "warm"], default=["cold", "warm"])
    ap.add_argument("--warm-texts", type=int, default=32, help="training texts warming a warm-cache mode")
    ap.add_argument("--repeats", type=int, default=3, help="Serve vs in-process repetitions (score, warm)")
    ap.add_argument("--serve", action="store_true", help="also compare Serve over HTTP (score mode)")
    ap.add_argument("--serve-batch", type=int, default=25, help="texts per HTTP request")
    ap.add_argument("--serve-concurrency", type=int, default=8, help="HTTP requests in flight")
    ap.add_argument(
        "--serve-meter", default="estimate", choices=["estimate", "auto", "off"], help="the Serve app's meter"
    )
    ap.add_argument(
        "--beside-ray",
        action="store_true",
        help="run the in-process engine beside an idle local Ray with Serve (controller, proxy, no app)",
    )
    ap.add_argument(
        "--bracket",
        action="store_true",
        help="run the in-process repetitions again after Serve (shows drift in the machine's speed)",
    )
    ap.add_argument(
        "--block-size",
        type=int,
        default=32,
        help="KV cache block size in tokens, as deployments/llm-cpu.yaml (0: vLLM's default, 128 on CPU; "
        "multiples of 32 there); the prefix cache keeps whole blocks only",
    )
    ap.add_argument(
        "--align-prefix",
        action="store_true",
        help="pad the instruction so the prompts' shared prefix fills whole cache blocks (LLMSpec.align_prefix)",
    )
    add_out_argument(ap, "bench_llm_modes")
    args = ap.parse_args()

    from serve_app.classifiers.llm_config import LLMSpec
    from serve_app.classifiers.prompts import argmax_label, biased_scores
    from serve_app.data import load_dataset, make_split

    ds = load_dataset(args.dataset)
    # with --serve, one set of n test texts per repetition (each new to the engine; the first is the
    # modes' set: a larger sample of the same split begins with the same texts)
    split = make_split(ds, args.n_calibration, args.n * (args.repeats if args.serve else 1), args.seed, 0)
    all_texts = list(split.test.texts)
    sets = [all_texts[i : i + args.n] for i in range(0, len(all_texts), args.n)][: args.repeats]
    texts, gold = sets[0], list(split.test.labels)[: args.n]
    warm = list(split.train.texts)[:WARM_TEXTS]
    warm_users = list(split.train.texts)[: max(args.warm_texts, 1)]
    spec_dict = cpu_llm_spec(
        "bench-llm",
        args.model,
        list(ds.labels),
        paper_max_tokens=args.paper_max_tokens,
        align_prefix=args.align_prefix,
        energy={"meter": "estimate", "attribution": "tokens"},
        engine_kwargs={
            "enable_prefix_caching": True,  # vLLM's default, stated
            **({"block_size": args.block_size} if args.block_size else {}),
        },
    )
    spec = LLMSpec.model_validate(spec_dict)
    with inprocess_engine(spec, args.beside_ray) as (clf, loop, start_s):
        results: dict[str, ModeResult] = {}  # keyed mode@cache
        inproc_top: list[list[dict[str, Any]]] = []
        bias: dict[str, float] = {}
        inproc_tps: list[float] = []
        for cache in args.cache:
            for mode in args.modes:
                warm_set = warm if cache == "cold" else warm_users
                preds, res, top = run_mode(clf, loop, mode, texts, gold, warm_set, args.in_flight, cache)
                results[f"{mode}@{cache}"] = res
                print(res.model_dump_json(), flush=True)
                if mode == "score" and cache == "warm" and args.serve:
                    more, more_top = repeat_texts(clf, loop, sets[1:], mode, args.in_flight)
                    inproc_tps, inproc_top = [res.texts_per_s, *more], [top, *more_top]
                if mode == "score" and args.n_calibration and not bias:
                    bias = calibrate(clf, loop, list(split.train.texts))
                if mode == "score" and bias:
                    labels = [argmax_label(biased_scores(p.scores or {}, bias), clf.labels) for p in preds]
                    acc = sum(lab == g for lab, g in zip(labels, gold, strict=True)) / len(gold)
                    cal = res.model_copy(update={"mode": "score+calibrated", "accuracy": acc})
                    results[f"{cal.mode}@{cache}"] = cal
                    print(cal.model_dump_json(), flush=True)
    ratios: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        p = results.get(f"paper@{r.cache}")
        if p is None:
            continue
        ratios[name] = {
            "generated_tokens_fewer_x": p.generated_tokens_per_text / max(r.generated_tokens_per_text, 1e-9),
            "time_less_x": p.wall_s / r.wall_s,
            "accuracy_minus_paper": r.accuracy - p.accuracy,
        }
    out = BenchResult(
        model=args.model,
        dataset=ds.name,
        seed=args.seed,
        n_test=len(texts),
        in_flight=args.in_flight,
        paper_max_tokens=args.paper_max_tokens,
        engine_start_s=start_s,
        modes=list(results.values()),
        label_bias=bias,
        ratios_vs_paper=ratios,
    )
    write_result(args, out)  # written before the Serve step can fail
    if args.serve and inproc_tps:
        out.serve = serve_comparison(
            {**spec_dict, "energy": {**spec_dict["energy"], "meter": args.serve_meter}},
            sets,
            "score",
            inproc_tps,
            inproc_top,
            BESIDE_RAY if args.beside_ray else "nothing",
            args.serve_batch,
            args.serve_concurrency,
            warm_users,
        )
        print(out.serve.model_dump_json(), flush=True)
        write_result(args, out)
        if args.bracket:
            after = inprocess_again(spec, sets, gold, warm_users, args.in_flight, args.beside_ray)
            out.serve.inprocess_after_texts_per_s = after
            write_result(args, out)
    print(f"engine start {start_s:.1f} s; results in {args.out}")
    print(
        "energy source: estimate (CPU time of this process tree x W/core + resident memory x W/GB)\n"
        f"{'mode@cache':24} {'acc':>6} {'parsed':>6} {'prompt tok':>10} {'prefilled':>9} {'generated':>9} "
        f"{'wall s':>8} {'texts/s':>8} {'J/text':>8}   (tokens per text)"
    )
    for name, r in results.items():
        jpt = f"{r.energy_j_per_text:8.2f}" if r.energy_j_per_text is not None else "       -"
        pre = (
            f"{r.prefilled_tokens_per_text:9.1f}" if r.prefilled_tokens_per_text is not None else "        -"
        )
        print(
            f"{name:24} {r.accuracy:6.3f} {r.parsed_rate:6.2f} {r.prompt_tokens_per_text:10.1f} {pre} "
            f"{r.generated_tokens_per_text:9.1f} {r.wall_s:8.1f} {r.texts_per_s:8.2f} {jpt}"
        )
    for name, rr in ratios.items():
        print(f"  {name} vs paper: " + ", ".join(f"{k} {v:.2f}" for k, v in rr.items()))
    for cache in args.cache if "paper" in args.modes else ():  # no paper run: nothing to compare with
        best, verdict = paper_target(ratios, cache, args.in_flight, len(texts))
        figure = "-" if best is None else f"{best:.2f}x"
        print(f"target score or choice >= 3x less time than paper ({cache} cache): {figure} {verdict}")
    if out.serve is not None:
        rs = out.serve.serve_vs_inprocess_ratio
        print(f"in-process engine beside: {out.serve.inprocess_beside}")
        verdict = "met" if min(rs) >= 0.9 else "MISSED"
        print(
            f"target Serve >= 0.9x in-process (score, warm), each repetition: {[round(r, 2) for r in rs]} {verdict}"
        )
        if out.serve.inprocess_after_texts_per_s:
            sv = out.serve
            print(
                "  texts/s, in-process before / Serve / in-process after: "
                + "; ".join(
                    f"{b:.2f} / {s:.2f} / {a:.2f}"
                    for b, s, a in zip(
                        sv.inprocess_texts_per_s,
                        sv.serve_texts_per_s,
                        sv.inprocess_after_texts_per_s,
                        strict=True,
                    )
                )
                + f"; Serve / mean of before and after: {[round(r, 2) for r in sv.serve_vs_bracket_ratio]}"
            )
        for i, kinds in enumerate(out.serve.serve_cpu_pct_by_kind):
            print(
                f"  Serve repetition {i + 1}, CPU % of one core: "
                + ", ".join(f"{k} {v:.1f}" for k, v in kinds.items())
            )
        for name, tops in (("in-process", out.serve.inprocess_cpu_top), ("Serve", out.serve.serve_cpu_top)):
            for i, top in enumerate(tops):
                print(
                    f"  {name} repetition {i + 1}, top processes (% of one core): "
                    + ", ".join(f"{p['title'][:40]} {p['pct']:.1f}" for p in top[:6])
                )


if __name__ == "__main__":
    main()
