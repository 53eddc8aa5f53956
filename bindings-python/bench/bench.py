"""W1-W4 (shared/bench/README.md) with Python no-op handlers, sync or async.

    python bindings-python/bench/bench.py --backend sqlite|postgres [--pg-url URL]
        [--mode sync|async] [--workload W1,W2,W3,W4] [--reps 3]

One worker (this process) at concurrency 10. Each repetition runs on a fresh database (SQLite
file or PostgreSQL schema). Prints the median of each metric over the repetitions.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid

import tasker

CONCURRENCY = 10
CHAIN = 100


def fresh(args):
    if args.backend == "postgres":
        return {"url": args.pg_url, "schema": "pybench_" + uuid.uuid4().hex[:10]}
    d = tempfile.mkdtemp(prefix="tasker-pybench")
    return {"url": f"sqlite://{d}/bench.db"}


class First:
    t = None


def handlers(engine, w, mode, first):
    def reg(name, fn):
        if mode == "async":
            async def afn(step, fn=fn):
                return fn(step)
            engine.handler(name)(afn)
        else:
            engine.handler(name)(fn)

    def mark(step):
        if first.t is None:
            first.t = time.monotonic()

    if w in ("W1", "W3"):
        reg("noop", lambda s: (mark(s), {"ok": True})[1])
    elif w == "W2":
        reg("A", lambda s: (mark(s), {"wf": s.context["wf"], "a": 1})[1])
        reg("B", lambda s: {"wf": s.results["A"]["wf"], "b": 2})
        reg("C", lambda s: {"wf": s.results["A"]["wf"], "c": 3})

        def d(s):
            if s.results["B"]["b"] != 2 or s.results["C"]["c"] != 3 or s.results["B"]["wf"] != s.context["wf"]:
                raise tasker.PermanentError(f"D saw {s.results}")
            return {"wf": s.context["wf"], "d": 4}

        reg("D", d)
    elif w == "W4":
        def step(s):
            mark(s)
            x = (next(iter(s.results.values()))["x"] if s.results else 0) + 1
            if s.name == f"s{CHAIN}" and x != CHAIN:
                raise tasker.PermanentError(f"chain ended at {x}")
            return {"x": x}

        reg("step", step)


def template(w):
    if w in ("W1", "W3"):
        return "name: job\nstep_templates:\n  - {name: noop}\n"
    if w == "W2":
        return "name: diamond\nstep_templates:\n  - {name: A}\n  - {name: B, depends_on_step: A}\n  - {name: C, depends_on_step: A}\n  - {name: D, depends_on_steps: [B, C]}\n"
    lines = ["name: chain", "step_templates:", "  - {name: s1, handler_class: step}"]
    lines += [f"  - {{name: s{k}, handler_class: step, depends_on_step: s{k - 1}}}" for k in range(2, CHAIN + 1)]
    return "\n".join(lines) + "\n"


def throughput(args, w):
    engine = tasker.Engine(**fresh(args))
    engine.register_template(template(w))
    first = First()
    handlers(engine, w, args.mode, first)
    if w == "W1":
        n = 20000
        for i in range(0, n, 1000):
            engine.create_tasks([{"name": "job", "context": {"i": j}} for j in range(i, i + 1000)])
        steps, tasks = n, n
    elif w == "W2":
        tasks = 2000
        for i in range(tasks):
            engine.create_task("diamond", {"wf": i})
        steps = 4 * tasks
    else:
        tasks = 20
        for i in range(tasks):
            engine.create_task("chain", {"wf": i})
        steps = tasks * CHAIN
    engine.run_worker(concurrency=CONCURRENCY, until_idle=True)
    end = time.monotonic()
    done = len(engine.list_tasks(status="complete", limit=tasks + 1))
    assert done == tasks, f"{done} of {tasks} complete"
    return {"steps_per_s": steps / (end - first.t)}


def latency(args):
    engine = tasker.Engine(**fresh(args))
    engine.register_template(template("W3"))
    handlers(engine, "W3", args.mode, First())
    worker = threading.Thread(target=engine.run_worker, kwargs={"concurrency": CONCURRENCY})
    worker.start()
    lat = []
    for i in range(310):
        t0 = time.monotonic()
        tid = engine.create_task("job", {"i": i})
        t = engine.wait_for_task(tid, timeout=30)
        dt = time.monotonic() - t0
        assert t["status"] == "complete"
        if i >= 10:
            lat.append(dt * 1000)
    engine.stop()
    worker.join()
    lat.sort()
    pct = lambda p: lat[max(1, min(len(lat), int(-(-p / 100 * len(lat) // 1)))) - 1]
    return {"p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--pg-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--mode", default="sync", choices=["sync", "async"])
    ap.add_argument("--workload", default="W1,W2,W3,W4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--allow-unsafe", action="store_true", help="report figures from a non-durable database (marked NOT DURABLE)")
    args = ap.parse_args()
    if args.backend == "postgres" and not args.pg_url:
        sys.exit("--backend postgres needs --pg-url or DATABASE_URL")
    d = tasker.Engine(**fresh(args)).durability()
    conditions = f"{d['description']}; worker concurrency {CONCURRENCY}, prefetch adaptive (2-10x concurrency by handler pace), batch window 1 ms, lanes: 2 on PostgreSQL, 1 on SQLite"
    print(f"# conditions: {conditions}", file=sys.stderr)
    if not d["durable"] and not args.allow_unsafe:
        sys.exit(f"refusing to report figures measured without durable commits ({d['description']}); pass --allow-unsafe")
    results = {}
    for rep in range(args.reps):
        for w in args.workload.split(","):
            m = latency(args) if w == "W3" else throughput(args, w)
            print(f"rep {rep + 1} {w}: " + " ".join(f"{k}={v:.3f}" for k, v in m.items()), file=sys.stderr)
            for k, v in m.items():
                results.setdefault((w, k), []).append(v)
    print(f"# python {args.mode} handlers, {args.backend}, medians of {args.reps}{'' if d['durable'] else ' -- NOT DURABLE'}")
    print(f"# conditions: {conditions}")
    for (w, k), vals in sorted(results.items()):
        print(f"{w} {k} {statistics.median(vals):.3f} [reps: {', '.join(f'{v:.3f}' for v in vals)}]")


if __name__ == "__main__":
    main()
