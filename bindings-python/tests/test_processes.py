"""Real processes: Ctrl-C during run_worker, two worker processes sharing PostgreSQL, the
example script."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tasker
from conftest import BACKEND

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent("""
    import os, sys, time, tasker
    engine = tasker.Engine(sys.argv[1], schema=(sys.argv[2] or None))
    log = open(sys.argv[3], "a")

    @engine.handler("slow")
    def slow(step):
        log.write(f"start {step.task_id} {os.getpid()}\\n"); log.flush()
        time.sleep(float(sys.argv[4]))
        log.write(f"end {step.task_id} {os.getpid()}\\n"); log.flush()
        return {"pid": os.getpid()}

    print("ready", flush=True)
    grace = float(sys.argv[6]) if len(sys.argv) > 6 else 30.0
    engine.run_worker(concurrency=2, until_idle=(sys.argv[5] == "idle"), shutdown_grace=grace)
    print("stopped cleanly", flush=True)
    os._exit(0)  # a handler thread still sleeping past the grace must not hold the exit
""")


def spawn(tmp_path, db, sleep, mode, grace=30.0):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "runs.log"
    return subprocess.Popen(
        [sys.executable, str(script), db["url"], db.get("schema") or "", str(log), str(sleep), mode, str(grace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ), log


def test_ctrl_c_during_run_worker_lets_in_flight_steps_finish(engine, db, tmp_path):
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = [engine.create_task("slow") for _ in range(3)]
    proc, log = spawn(tmp_path, db, 0.5, "forever")
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 20
    while not (log.exists() and "start" in log.read_text()):
        assert time.time() < deadline, "no step started"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    lines = log.read_text().split()
    assert lines.count("start") == lines.count("end") >= 1, log.read_text()
    states = [engine.get_task(i)["status"] for i in ids]
    assert "in_progress" not in [s["status"] for i in ids for s in engine.get_task(i)["steps"]], states
    engine.handler("slow")(lambda s: {"pid": os.getpid()})
    engine.run_worker(until_idle=True)
    assert all(engine.get_task(i)["status"] == "complete" for i in ids)


def test_ctrl_c_past_the_grace_reports_unfinished_steps_instead_of_leaving_them_to_the_lease(engine, db, tmp_path):
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow, default_retry_limit: 3}\n")
    ids = [engine.create_task("slow") for _ in range(6)]
    proc, log = spawn(tmp_path, db, 30, "forever", grace=0.5)
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.time() + 20
    while not (log.exists() and log.read_text().count("start") == 2):
        assert time.time() < deadline, "two steps did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    steps = [engine.get_task(i)["steps"][0] for i in ids]
    running = [s for s in steps if s["error"] and s["error"]["kind"] == "worker_shutdown"]
    # The two that ran were reported (the attempt counts), the rest were never spent.
    assert len(running) == 2, steps
    for s in running:
        assert (s["status"], s["attempts"]) == ("error", 1), s
        assert s["error"]["message"].startswith("worker_shutdown"), s
    others = [s for s in steps if s not in running]
    assert all((s["status"], s["attempts"]) == ("pending", 0) for s in others), others
    # Nothing waits for a lease: a new worker runs every step at once.
    engine.handler("slow")(lambda s: {"pid": os.getpid()})
    started = time.monotonic()
    engine.run_worker(until_idle=True)
    assert time.monotonic() - started < 10, "steps waited for a lease to expire"
    assert all(engine.get_task(i)["status"] == "complete" for i in ids)


OUTAGE_WORKER = textwrap.dedent("""
    import sys, time, tasker
    engine = tasker.Engine(sys.argv[1], schema=sys.argv[2])

    @engine.handler("tick")
    def tick(step):
        time.sleep(0.01)
        return step.context["i"]

    print("ready", flush=True)
    engine.run_worker(concurrency=4, until_idle=True)
    print("done", flush=True)
""")


@pytest.mark.skipif(BACKEND != "postgres" or not os.environ.get("TASKER_PGDATA"),
                    reason="stops the PostgreSQL server of scripts/test.sh (TASKER_PGDATA, TASKER_PGBIN)")
def test_a_python_worker_rides_out_postgresql_stopped_longer_than_the_pool_timeout(engine, db, tmp_path):
    engine.register_template("name: tick\nstep_templates:\n  - {name: tick}\n")
    ids = engine.create_tasks([{"name": "tick", "context": {"i": i}} for i in range(600)])
    script = tmp_path / "outage_worker.py"
    script.write_text(OUTAGE_WORKER)
    proc = subprocess.Popen([sys.executable, str(script), db["url"], db["schema"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    pg_ctl = [ "runuser", "-u", "postgres", "--", os.path.join(os.environ["TASKER_PGBIN"], "pg_ctl"),
               "-D", os.environ["TASKER_PGDATA"], "-w"]
    time.sleep(0.5)
    subprocess.run(pg_ctl + ["-m", "fast", "stop"], check=True, capture_output=True)
    try:
        time.sleep(15)  # longer than the pool's 10 s connection timeout
        assert proc.poll() is None, f"the worker died while the database was away: {proc.stderr.read()}"
    finally:
        subprocess.run(pg_ctl + ["-l", os.path.join(os.path.dirname(os.environ["TASKER_PGDATA"]), "server.log"), "start"],
                       check=True, capture_output=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert out.split()[-1] == "done", out
    engine2 = tasker.Engine(**db)
    states = [engine2.get_task(i)["status"] for i in ids]
    assert states.count("complete") == 600, {s: states.count(s) for s in set(states)}


@pytest.mark.skipif(BACKEND != "postgres", reason="several worker processes need PostgreSQL (TASKER_TEST_BACKEND=postgres)")
def test_two_python_worker_processes_share_postgresql(engine, db, tmp_path):
    engine.register_template("name: slow\nstep_templates:\n  - {name: slow}\n")
    ids = [engine.create_task("slow") for _ in range(40)]
    a, log = spawn(tmp_path, db, 0.05, "idle")
    b, _ = spawn(tmp_path, db, 0.05, "idle")
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    pids = set()
    for i in ids:
        t = engine.get_task(i)
        assert t["status"] == "complete"
        assert t["steps"][0]["attempts"] == 1
        pids.add(t["steps"][0]["results"]["pid"])
    assert pids == {a.pid, b.pid}, "both processes did work"
    assert log.read_text().split().count("start") == 40


def test_the_readme_quickstart_runs(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples/python/quickstart.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "HELLO WORLD!"


def test_the_python_example_runs(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "examples/python/orders.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("complete"), out.stdout
    assert "('charge', 'complete', 2)" in out.stdout
