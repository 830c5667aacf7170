"""Soft routing vs random routing (the funcX baseline) vs the offline optimum (Belady).

One Zipf(s=1.0) stream of short tasks over several container images (default: 500 tasks,
12 images, seed 7), a budget of 3 warm pools of one worker each, real docker containers
(``--network host``) for every pool, and three ways to serve the stream:

soft     this endpoint: a RoutingEngine on ProcessPoolEngine (``container_routing: soft``);
         tasks wait in per-image queues and go to warm pools, cold-starting or evicting the
         least recently used idle pool when needed (`endpoint.containers.router`).
random   funcX's baseline: each task goes to one of the 3 pool slots at random, in arrival
         order; a slot whose container holds another image restarts it (a cold start).
optimal  Belady's offline optimum for the same 3 slots serving the stream in arrival order:
         on a miss, replace the image whose next use is farthest in the future. Its cold
         starts are counted from the stream; its makespan comes from running that plan.

random and optimal run their plans with the same pools (ProcessPoolEngine in docker) as
soft. Soft routing may reorder waiting tasks by image, which in-order policies cannot, so it
can beat the in-order optimum; the number of distinct images is the floor for any order.

Prints each policy's cold starts and makespan, then ``cold_starts_ratio_random=X`` and
``cold_starts_ratio_optimal=Y`` (ours over theirs), the makespan reduction against random,
and the median latency a warm hit adds over the same task on a local process pool.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the image builder lives with the container tests

from endpoint.engines.base import Engine, TaskSubmission  # noqa: E402
from endpoint.engines.build import build_engine_from_dict  # noqa: E402
from endpoint.engines.routing import RoutingEngine  # noqa: E402
from tests.containers.images import build_images  # noqa: E402
from tests.unit.test_engines import EPID, Results, submission  # noqa: E402

BUDGET = 3
READY_TIMEOUT_S = 120.0


def short_task(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@dataclass
class Outcome:
    cold_starts: int
    makespan_s: float


# ---- the stream -------------------------------------------------------------------------


def zipf_stream(tasks: int, images: list[str], s: float, rng: random.Random) -> list[str]:
    weights = [1.0 / rank**s for rank in range(1, len(images) + 1)]
    return rng.choices(images, weights=weights, k=tasks)


def arrivals(tasks: int, rate: float, rng: random.Random) -> list[float]:
    """Offsets (s) at which tasks arrive: all at once, or a Poisson stream of ``rate``/s."""
    if rate <= 0:
        return [0.0] * tasks
    at, out = 0.0, []
    for _ in range(tasks):
        out.append(at)
        at += rng.expovariate(rate)
    return out


def belady_plan(stream: list[str], slots: int) -> list[int]:
    """The slot serving each request under Belady's rule (misses: image changes per slot)."""
    next_use: list[float] = [float("inf")] * len(stream)
    seen: dict[str, int] = {}
    for i in range(len(stream) - 1, -1, -1):
        next_use[i] = seen.get(stream[i], float("inf"))
        seen[stream[i]] = i
    holding: list[str | None] = [None] * slots
    upcoming: dict[str, float] = {}
    plan = []
    for i, image in enumerate(stream):
        if image in holding:
            slot = holding.index(image)
        elif None in holding:
            slot = holding.index(None)
        else:
            slot = max(range(slots), key=lambda k: upcoming.get(holding[k] or "", float("inf")))
        holding[slot] = image
        upcoming[image] = next_use[i]
        plan.append(slot)
    return plan


def count_cold_starts(stream: list[str], plan: list[int]) -> int:
    current: dict[int, str] = {}
    starts = 0
    for image, slot in zip(stream, plan, strict=True):
        if current.get(slot) != image:
            starts += 1
            current[slot] = image
    return starts


# ---- running it -------------------------------------------------------------------------


def make_tasks(stream: list[str], seconds: float) -> list[TaskSubmission]:
    return [submission(short_task, seconds) for _ in stream]


def pool_spec(image: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "ProcessPoolEngine", "max_workers": 1}
    if image is not None:
        spec.update(container_type="docker", container_uri=image)
    return spec


def wait_all(results: Results, subs: list[TaskSubmission]) -> None:
    for result in results.wait(*(s.task_id for s in subs), timeout=3600):
        assert result.error_details is None, result.data


def submit_on_schedule(
    submit: Callable[[TaskSubmission], None], subs: list[TaskSubmission], at: list[float]
) -> float:
    began = time.perf_counter()
    for sub, offset in zip(subs, at, strict=True):
        delay = began + offset - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submit(sub)
    return began


def run_soft(stream: list[str], at: list[float], seconds: float, run_dir: Path) -> Outcome:
    engine = build_engine_from_dict(
        {
            **pool_spec(None),
            "container_type": "docker",
            "container_routing": "soft",
            "max_warm_containers": BUDGET,
            "container_workers": 1,
        }
    )
    assert isinstance(engine, RoutingEngine)
    results = Results()
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    subs = make_tasks(stream, seconds)
    for sub, image in zip(subs, stream, strict=True):
        sub.resource_specification = {"container_image": image}
    began = submit_on_schedule(engine.submit, subs, at)
    wait_all(results, subs)
    makespan = time.perf_counter() - began
    counters = engine.status()["containers"]
    engine.shutdown(wait=True)
    return Outcome(int(counters["cold_starts"]), makespan)


def run_plan(
    stream: list[str], plan: list[int], at: list[float], seconds: float, run_dir: Path
) -> Outcome:
    """Serve the stream with fixed slot choices: each slot runs its share in order."""
    subs = make_tasks(stream, seconds)
    shares: dict[int, list[int]] = {}
    for index, slot in enumerate(plan):
        shares.setdefault(slot, []).append(index)
    starts = [0] * BUDGET
    began = time.perf_counter()
    threads = [
        threading.Thread(
            target=_run_slot, args=(slot, idx, stream, subs, at, began, starts, run_dir)
        )
        for slot, idx in shares.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Outcome(sum(starts), time.perf_counter() - began)


def _run_slot(
    slot: int,
    indexes: list[int],
    stream: list[str],
    subs: list[TaskSubmission],
    at: list[float],
    began: float,
    starts: list[int],
    run_dir: Path,
) -> None:
    engine: Engine | None = None
    current: str | None = None
    results = Results()
    for run in _runs(indexes, stream):
        image = stream[run[0]]
        if image != current:  # the container holds another image: restart it
            if engine is not None:
                engine.shutdown(wait=True)
            engine = build_engine_from_dict(pool_spec(image))
            engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
            engine.wait_ready(READY_TIMEOUT_S)
            starts[slot] += 1
            current = image
        assert engine is not None
        batch = [subs[i] for i in run]
        submit_on_schedule(
            engine.submit, batch, [max(0.0, began + at[i] - time.perf_counter()) for i in run]
        )
        wait_all(results, batch)
    if engine is not None:
        engine.shutdown(wait=True)


def _runs(indexes: list[int], stream: list[str]) -> list[list[int]]:
    """Consecutive tasks of one slot with the same image (sent together, like a warm pool)."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and stream[runs[-1][-1]] == stream[i]:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


# ---- warm-hit latency -------------------------------------------------------------------


def warm_hit_added_latency(image: str, samples: int, run_dir: Path) -> float:
    """Median ms a warm hit adds over the same no-op task on a local process pool."""
    engine = build_engine_from_dict(
        {**pool_spec(None), "container_type": "docker", "container_routing": "soft"}
    )
    results = Results()
    engine.start(endpoint_id=EPID, run_dir=run_dir, on_result=results)
    warm = _latencies(engine, results, image, samples)
    local = _latencies(engine, results, None, samples)
    engine.shutdown(wait=True)
    return (statistics.median(warm) - statistics.median(local)) * 1000


def _latencies(engine: Engine, results: Results, image: str | None, samples: int) -> list[float]:
    out = []
    for n in range(samples + 5):  # the first few warm the pool (and, for images, start it)
        sub = submission(short_task, 0.0)
        if image is not None:
            sub.resource_specification = {"container_image": image}
        began = time.perf_counter()
        engine.submit(sub)
        wait_all(results, [sub])
        if n >= 5:
            out.append(time.perf_counter() - began)
    return out


# ---- main -------------------------------------------------------------------------------


def tag_images(count: int) -> list[str]:
    built = build_images(names=(), mismatch=False)
    names = [f"ccep-bench/img-{n:02d}:{built.tag}" for n in range(count)]
    for name in names:
        subprocess.run(["docker", "tag", built.worker, name], check=True)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--zipf-s", type=float, default=1.0)
    parser.add_argument("--task-ms", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="tasks/s (0: all at once)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    images = tag_images(args.images)
    stream = zipf_stream(args.tasks, images, args.zipf_s, rng)
    at = arrivals(args.tasks, args.rate, rng)
    seconds = args.task_ms / 1000
    random_plan = [rng.randrange(BUDGET) for _ in stream]
    optimal_plan = belady_plan(stream, BUDGET)
    arrival = "all submitted at once" if args.rate <= 0 else f"Poisson, {args.rate:g} tasks/s"
    print(
        f"routing benchmark: {args.tasks} tasks of {args.task_ms:g} ms, Zipf(s={args.zipf_s:g})"
        f" over {args.images} images, {BUDGET} warm pools of 1 worker, docker, {arrival},"
        f" seed {args.seed}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        run_dir = Path(tmp)
        outcomes = {
            "soft": run_soft(stream, at, seconds, run_dir),
            "random": run_plan(stream, random_plan, at, seconds, run_dir),
            "optimal": run_plan(stream, optimal_plan, at, seconds, run_dir),
        }
        latency_ms = warm_hit_added_latency(images[0], args.latency_samples, run_dir)
    report(outcomes, count_cold_starts(stream, optimal_plan), len(set(stream)), latency_ms)
    return 0


def report(outcomes: dict[str, Outcome], belady: int, distinct: int, latency_ms: float) -> None:
    print(f"{'policy':<8} {'cold_starts':>11} {'makespan_s':>10}")
    for name, outcome in outcomes.items():
        print(f"{name:<8} {outcome.cold_starts:>11} {outcome.makespan_s:>10.2f}")
    soft, rand, optimal = outcomes["soft"], outcomes["random"], outcomes["optimal"]
    print(f"belady_cold_starts={belady} (offline count; the optimal run had {optimal.cold_starts})")
    print(f"distinct_images={distinct} (the fewest cold starts any serving order can have)")
    print(f"cold_starts_ratio_random={soft.cold_starts / max(1, rand.cold_starts):.3f}")
    print(f"cold_starts_ratio_optimal={soft.cold_starts / max(1, belady):.3f}")
    print(f"makespan_reduction_vs_random={1 - soft.makespan_s / rand.makespan_s:.1%}")
    print(f"warm_hit_added_latency_ms_median={latency_ms:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
