"""Concurrent users on the app's named API: errors, cross-user leaks, latency and server memory.

    python bench/load_test.py [--users 16] [--seconds 60] [--model tiny] [--url http://127.0.0.1:PORT/]
                              [--max-batch-size N] [--out bench/results/load_test.json]
    python bench/load_test.py --compare-batching [--out bench/results/load_test_batched.json]

Starts the app as its own server process on 127.0.0.1 (``python app.py``, as deployed; or in this
process with --in-process, or connects to --url, which must be local) and runs N
gradio_client users at once, each in its own thread with its OWN ShapesRef scene (its own seed,
saved as a PNG), its own regions and its own multi-turn history (each answer's history is passed
back on the next turn). A user's loop: /chat with a grounding question from
``make_turn(scene, rng, task)`` (ground_A/S/R, ground_all, count) or, one time in three, "What is
<region1>?" with a point inside one of its own objects. Loops stop at the deadline (at most 60 s)
or after --max-requests each.

Checked on every answer:
- errors: any exception from the client (must be 0);
- leaks (must be 0): an answer leaks when one of its boxes overlaps none of the user's own objects
  (IoU < 0.1 with every ground-truth box of its scene) AND matches an object of another user's
  scene (IoU >= 0.5); or when its returned history is not exactly the history the user sent plus
  its own message (and its own regions) and one answer;
- replay mismatches (must be 0): answers are greedy, so a sample of requests is sent again one at a
  time after the load, and each must get exactly the same answer (text, boxes) as under load. This
  catches any mix-up between concurrent users whatever the model's quality.
Reported: p50/p95 latency (client wall time, queueing included), requests per second, and the
server process's RSS from after a warm-up wave (one request per user) to the end (target < 25 %
growth). With --in-process the RSS also holds the 16 gradio_client users (their downloads,
histories and HTTP clients), which is not the server's memory: the default measures the server alone.

Batched serving: the app answers the ``/chat`` requests that arrive together in one
``Pipeline.chat_batch`` call, at most ``--max-batch-size`` of them (the app's own option; default
16; 1 answers them one at a time). ``--compare-batching`` runs the same load twice in one
invocation, on a fresh server each time: unbatched (1) and then batched (--batch-size, default
16), and writes both reports with the p95 ratio (target: batched p95 at most half the unbatched).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MAX_SECONDS = 60
BATCHED = 16  # --max-batch-size of the batched server in --compare-batching
P95_RATIO_TARGET = 0.5  # batched p95 / unbatched p95, at most
OWN_IOU = 0.1  # a box overlapping an own object at least this much is not a leak
OTHER_IOU = 0.5  # ... and one matching another user's object this much is
TASKS = ("ground_A", "ground_S", "ground_R", "ground_all", "count")
REGION_ODDS = 1 / 3  # share of region questions


# --- users -------------------------------------------------------------------------------------


@dataclass
class User:
    id: int
    seed: int
    path: str  # the scene PNG
    boxes: np.ndarray  # (K, 4) ground-truth boxes of its scene, pixels
    scene: object = field(repr=False)
    rng: np.random.Generator = field(repr=False)
    history: list = field(default_factory=list)
    sent: set = field(default_factory=set)  # every message this user sent
    records: list = field(default_factory=list)  # one dict per request


def make_users(n: int, seed: int, folder: Path) -> list[User]:
    """n users with their own scenes (one with a ground_A expression), saved as PNGs in folder."""
    from perception.data.shapesref import draw_scene, make_turn

    users, s = [], seed
    while len(users) < n:
        rng = np.random.default_rng(s)
        scene = draw_scene(rng)
        s += 1
        if make_turn(scene, np.random.default_rng(0), "ground_A") is None:
            continue  # every object has a twin: no unique expression, draw another
        path = folder / f"user{len(users):02d}.png"
        scene.image.save(path)
        boxes = np.array([o.box for o in scene.objects], np.float64).reshape(-1, 4)
        users.append(User(len(users), s - 1, str(path), boxes, scene, rng))
    return users


def next_question(user: User) -> tuple[str, list]:
    """(message, regions) of the user's next turn, about its own scene."""
    from perception.data.shapesref import make_turn

    rng = user.rng
    if rng.random() < REGION_ODDS:
        o = user.scene.objects[int(rng.integers(len(user.scene.objects)))]
        ys, xs = np.nonzero(o.mask)
        j = int(rng.integers(len(xs)))
        return "What is <region1>?", [{"point": [int(xs[j]), int(ys[j])]}]
    turn = make_turn(user.scene, rng, TASKS[int(rng.integers(len(TASKS)))]) or make_turn(user.scene, rng, "ground_A")
    return turn.user, []


# --- checks ------------------------------------------------------------------------------------


def iou(a, b: np.ndarray) -> np.ndarray:
    """IoU of box a (x1, y1, x2, y2) with each row of b (K, 4)."""
    if len(b) == 0:
        return np.zeros(0)
    a = np.asarray(a, np.float64)
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda r: np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def leaked_boxes(boxes: list, own: np.ndarray, others: np.ndarray) -> int:
    """Boxes that overlap no own object (IoU < OWN_IOU) but match another user's (IoU >= OTHER_IOU)."""
    n = 0
    for b in boxes:
        if iou(b, own).max(initial=0) < OWN_IOU and iou(b, others).max(initial=0) >= OTHER_IOU:
            n += 1
    return n


def history_problem(sent: list, got: list, message: str, regions: list, user: User) -> str | None:
    """Why the returned history is not the sent one + this user's message + one answer, or None."""
    if not isinstance(got, list) or len(got) != len(sent) + 2:
        return f"history has {len(got) if isinstance(got, list) else type(got).__name__} messages, sent {len(sent)} + 2"
    if got[: len(sent)] != sent:
        return "the earlier messages changed"
    mine, answer = got[-2], got[-1]
    if mine.get("role") != "user" or mine.get("content") != message or list(mine.get("regions") or []) != regions:
        return f"the new user message is not this user's: {str(mine)[:120]}"
    if answer.get("role") != "assistant":
        return "no assistant message at the end"
    foreign = [m["content"] for m in got
               if isinstance(m, dict) and m.get("role") == "user" and m["content"] not in user.sent]
    if foreign:
        return f"messages this user never sent: {foreign[:2]}"
    return None


# --- one user ------------------------------------------------------------------------------------


def ask(client, user: User, others: np.ndarray, phase: str, keep: bool = False) -> dict:
    """One /chat turn; updates the user's history; returns the request's record (keep: with what
    was sent, for the replay)."""
    from gradio_client import handle_file

    message, regions = next_question(user)
    user.sent.add(message)
    sent = list(user.history)
    rec = {"user": user.id, "phase": phase, "message": message, "regions": regions, "history_len": len(sent),
           "kind": "region" if regions else "ground"}
    t0 = time.perf_counter()
    try:
        text, history, objects, _ = client.predict(handle_file(user.path), message, json.dumps(regions), sent,
                                                   api_name="/chat")
    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
        rec.update(seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {str(e)[:200]}")
        return rec
    rec["seconds"] = time.perf_counter() - t0
    boxes = [o["box"] for o in objects]
    rec.update(error=None, answer=history[-1]["content"] if history else None, boxes=boxes,
               leaked_boxes=leaked_boxes(boxes, user.boxes, others),
               history_problem=history_problem(sent, history, message, regions, user))
    if keep:
        rec["sent_history"] = sent
    if rec["history_problem"] is None:
        user.history = history
    return rec


def user_loop(url: str, user: User, others: np.ndarray, clock: dict, max_requests: int, keep: int,
              barrier: threading.Barrier, overlays: bool = True):
    """Warm-up request, wait for everyone, then ask until clock["deadline"] or max_requests.
    overlays: download each answer's overlay PNG (gradio_client's default), or not."""
    from gradio_client import Client

    client = None
    try:
        client = Client(url, verbose=False, download_files=overlays)
        user.records.append(ask(client, user, others, "warmup"))
    except Exception as e:  # noqa: BLE001 - the client could not connect: an error, and no loop
        user.records.append({"user": user.id, "phase": "warmup", "kind": "ground", "history_len": 0, "seconds": 0.0,
                             "error": f"{type(e).__name__}: {str(e)[:200]}"})
    barrier.wait()  # the warm-up wave is over for everyone: memory baseline
    barrier.wait()  # the clock is set
    while client is not None and time.monotonic() < clock["deadline"] and len(user.records) < max_requests:
        kept = sum("sent_history" in r for r in user.records)
        user.records.append(ask(client, user, others, "load", keep=kept < keep))


def replay(url: str, users: list[User]) -> list[dict]:
    """Send each kept request again, one at a time, and compare the answers with those under load."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)  # the overlay is not compared
    out = []
    for u in users:
        for r in u.records:
            if "sent_history" not in r or r["history_problem"] is not None:
                continue
            try:
                _, history, objects, _ = client.predict(handle_file(u.path), r["message"], json.dumps(r["regions"]),
                                                        r["sent_history"], api_name="/chat")
                same = history[-1]["content"] == r["answer"] and [o["box"] for o in objects] == r["boxes"]
            except Exception:  # noqa: BLE001 - a failed replay is a mismatch
                same = False
            out.append({"user": u.id, "message": r["message"], "same": same})
    return out


# --- server ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model_name: str, device: str = "cpu", max_batch: int | None = None):
    """The app in this process on 127.0.0.1 -> (url, close). max_batch: the most /chat requests
    answered together (None: the app's default)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app import build_app, launch, model

    model.configure(model_name, device, max_batch)
    model.get_pipeline()  # load before the clock starts
    demo = build_app()
    port = _free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/", demo.close


def start_server_process(model_name: str, device: str = "cpu", log_dir: Path | None = None,
                         max_batch: int | None = None):
    """``python app.py`` as its own process on 127.0.0.1 -> (url, psutil.Process, close).
    max_batch: its --max-batch-size (None: the app's default)."""
    import subprocess
    import urllib.request

    import psutil

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False")
    log = open(Path(log_dir or tempfile.gettempdir()) / f"load-test-server-{port}.log", "w")
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", model_name, "--device", device]
    if max_batch is not None:
        cmd += ["--max-batch-size", str(max_batch)]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def close():
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            close()
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving; see {log.name}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                close()
                raise RuntimeError(f"the app did not answer on {url} within 180 s; see {log.name}")
            time.sleep(0.5)
    return url, psutil.Process(proc.pid), close


def _server_process(url: str | None):
    """psutil.Process of the server: this one, or the local process listening on --url's port (or None)."""
    import psutil

    if url is None:
        return psutil.Process()
    port = urlparse(url).port
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
                return psutil.Process(c.pid)
    except (psutil.AccessDenied, PermissionError):
        pass
    return None


class MemoryWatch(threading.Thread):
    """Samples the server's RSS every 0.25 s; .peak after the baseline is set."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = proc, 0, threading.Event()

    def rss(self) -> int | None:
        return self.proc.memory_info().rss if self.proc else None

    def run(self):
        while not self.stop.wait(0.25):
            self.peak = max(self.peak, self.rss() or 0)


# --- the run -----------------------------------------------------------------------------------


def _ms(xs, q):
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


def run_load(users: int = 16, seconds: float = 60, url: str | None = None, model: str = "tiny",
             device: str = "cpu", max_requests: int = 1000, replay_per_user: int = 1, seed: int = 40_000_000,
             in_process: bool = False, max_batch: int | None = None, overlays: bool = True) -> dict:
    """Run the load test and return its report (see the module docstring). max_batch: the served
    app's --max-batch-size (ignored with url: that server has its own). overlays: the clients
    download each answer's overlay PNG (False: they skip it, as --skip-overlays)."""
    import psutil

    seconds = min(float(seconds), MAX_SECONDS)
    if url is not None and urlparse(url).hostname not in ("127.0.0.1", "localhost"):
        raise ValueError(f"--url must be a local server (127.0.0.1 or localhost); got {url}")
    close, where, log_dir = None, url, None
    if url is None and in_process:
        url, close = start_app(model, device, max_batch)
        server, where = _server_process(None), "in-process"
    elif url is None:
        log_dir = Path(tempfile.mkdtemp(prefix="load-test-server-"))
        url, server, close = start_server_process(model, device, log_dir=log_dir, max_batch=max_batch)
        where = "own process (python app.py)"
    else:
        server = _server_process(url)
    try:
        with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
            people = make_users(users, seed, Path(tmp))
            barrier = threading.Barrier(users + 1, timeout=600)
            clock = {"deadline": 0.0}
            threads = []
            for u in people:
                others = np.concatenate([v.boxes for v in people if v is not u] or [np.zeros((0, 4))])
                threads.append(threading.Thread(target=user_loop, daemon=True,
                                                args=(url, u, others, clock, max_requests, replay_per_user, barrier,
                                                      overlays)))
            for t in threads:
                t.start()
            barrier.wait()  # every user has had its warm-up answer
            watch = MemoryWatch(server)
            rss_warm = watch.rss()
            cpu_warm = _cpu_seconds(server), _cpu_seconds(psutil.Process())
            batches_warm = _logged_batches(log_dir)
            watch.peak = rss_warm or 0
            watch.start()
            clock["deadline"] = time.monotonic() + seconds
            t_load = time.monotonic()
            barrier.wait()
            for t in threads:
                t.join(timeout=seconds + 300)
            load_s = time.monotonic() - t_load
            rss_end = watch.rss()
            cpu_end = _cpu_seconds(server), _cpu_seconds(psutil.Process())
            batches = _logged_batches(log_dir)
            batches = batches[len(batches_warm):] if batches is not None else None
            watch.stop.set()
            replays = replay(url, people) if replay_per_user else []
    finally:
        if close is not None:
            close()

    recs = [r for u in people for r in u.records]
    load = [r for r in recs if r["phase"] == "load"]
    ok = [r for r in load if r["error"] is None]
    errors = [r for r in recs if r["error"]]
    hist = [r for r in recs if r.get("history_problem")]
    leaked = [r for r in recs if r.get("leaked_boxes")]
    growth = (rss_end - rss_warm) / rss_warm if rss_warm and rss_end else None
    report = {
        "users": users, "seconds": seconds, "model": model if close else "as served",
        "max_batch_size": (max_batch or "app default") if close else "as served",
        "url": where,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "requests": len(recs), "requests_under_load": len(load),
        "requests_per_s": round(len(ok) / load_s, 2) if load_s else None,
        "per_user_requests": [len(u.records) for u in people],
        "boxes_checked": sum(len(r.get("boxes") or []) for r in recs),
        "errors": len(errors), "error_examples": [r["error"] for r in errors[:5]],
        "leaks": sum(1 for r in recs if r.get("leaked_boxes") or r.get("history_problem")),
        "leaked_box_answers": len(leaked),
        "history_problems": len(hist), "history_examples": [r["history_problem"] for r in hist[:5]],
        "replayed": len(replays), "replay_mismatches": sum(not r["same"] for r in replays),
        "latency_ms": {
            "p50": _ms([r["seconds"] for r in ok], 0.5), "p95": _ms([r["seconds"] for r in ok], 0.95),
            "ground_p50": _ms([r["seconds"] for r in ok if r["kind"] == "ground"], 0.5),
            "region_p50": _ms([r["seconds"] for r in ok if r["kind"] == "region"], 0.5),
            "mean": round(1000 * statistics.mean(r["seconds"] for r in ok), 1) if ok else None,
        },
        "max_history_messages": max((r["history_len"] for r in recs), default=0),
        "overlays_downloaded": overlays,
        "server_batches": _batch_summary(batches),
        "rss_mb": {"after_warmup": _mb(rss_warm), "end": _mb(rss_end), "peak": _mb(watch.peak or None)},
        "rss_growth": round(growth, 4) if growth is not None else None,
        # CPU seconds per answer under load: the server's (model + Gradio), and the load-test clients'
        # (this process; with --in-process it holds the server too). Less sensitive than wall time
        # to what else runs on the machine.
        "cpu_s_per_answer": {"server": _per(cpu_end[0], cpu_warm[0], len(ok)),
                             "clients": _per(cpu_end[1], cpu_warm[1], len(ok))},
        "targets": {"errors": 0, "leaks": 0, "replay_mismatches": 0, "rss_growth_below": 0.25},
    }
    report["pass"] = (report["errors"] == 0 and report["leaks"] == 0 and report["replay_mismatches"] == 0
                      and (growth is None or growth < 0.25))
    return report


def _logged_batches(log_dir: Path | None) -> list[int] | None:
    """The sizes of the /chat batches the server process has logged so far ("answered a batch of
    N", app/batching.py); None when the server was not started here."""
    import re

    if log_dir is None:
        return None
    return [int(n) for f in sorted(log_dir.glob("*.log"))
            for n in re.findall(r"answered a batch of (\d+)", f.read_text())]


def _batch_summary(sizes: list[int] | None) -> dict | None:
    """The batches answered under load: {"count", "mean_size", "sizes": {N: how many}}."""
    from collections import Counter

    if sizes is None:
        return None
    return {"count": len(sizes), "mean_size": round(statistics.mean(sizes), 2) if sizes else None,
            "sizes": dict(sorted(Counter(sizes).items()))}


def _cpu_seconds(proc) -> float | None:
    """User + system CPU seconds of a psutil.Process and its threads (None: unknown)."""
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except Exception:  # noqa: BLE001 - no process, or not ours to read
        return None


def _per(end, start, n):
    return round((end - start) / n, 4) if end is not None and start is not None and n else None


def _mb(b):
    return round(b / 2**20, 1) if b else None


def compare_batching(batch_size: int = BATCHED, **kw) -> dict:
    """The same load on an unbatched server (--max-batch-size 1), then on a batched one
    (--max-batch-size batch_size), each started fresh -> both reports and their p50/p95 ratios."""
    if kw.get("url") is not None:
        raise ValueError("--compare-batching starts its own servers: it cannot use --url")
    runs = {"unbatched": run_load(max_batch=1, **kw), "batched": run_load(max_batch=batch_size, **kw)}
    un, ba = runs["unbatched"]["latency_ms"], runs["batched"]["latency_ms"]
    ratio = lambda k: round(ba[k] / un[k], 3) if ba[k] and un[k] else None  # noqa: E731
    rps_u, rps_b = runs["unbatched"]["requests_per_s"], runs["batched"]["requests_per_s"]
    out = dict(runs, p50_ratio=ratio("p50"), p95_ratio=ratio("p95"),
               requests_per_s_ratio=round(rps_b / rps_u, 3) if rps_u and rps_b else None,
               target={"p95_ratio_at_most": P95_RATIO_TARGET})
    out["target_met"] = out["p95_ratio"] is not None and out["p95_ratio"] <= P95_RATIO_TARGET
    out["pass"] = runs["unbatched"]["pass"] and runs["batched"]["pass"]
    return out


def comparison_table(cmp: dict) -> str:
    """The markdown table of docs/BENCHMARKS.md: one row per server."""
    rows = ["| serving | max batch | mean batch | answers/s | p50 ms | p95 ms | CPU s/answer: server, clients "
            "| errors | leaks | replay mismatches |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for name in ("unbatched", "batched"):
        r = cmp[name]
        batches, cpu = r["server_batches"] or {}, r["cpu_s_per_answer"]
        rows.append(f"| {name} | {r['max_batch_size']} | {batches.get('mean_size')} | {r['requests_per_s']} | "
                    f"{r['latency_ms']['p50']} | {r['latency_ms']['p95']} | {cpu['server']}, {cpu['clients']} | "
                    f"{r['errors']} | {r['leaks']} | {r['replay_mismatches']} of {r['replayed']} |")
    rows.append(f"\nbatched / unbatched: p50 x{cmp['p50_ratio']}, p95 x{cmp['p95_ratio']} (target <= "
                f"{P95_RATIO_TARGET}: {'met' if cmp['target_met'] else 'NOT met'}), answers/s x{cmp['requests_per_s_ratio']}")
    return "\n".join(rows)


def table(rep: dict) -> str:
    lat = rep["latency_ms"]
    rows = [
        ("users x seconds", f"{rep['users']} x {rep['seconds']:g} s ({rep['url']}, model {rep['model']}, "
                            f"max batch {rep['max_batch_size']})"),
        ("requests (under load)",
         f"{rep['requests']} ({rep['requests_under_load']}), {rep['requests_per_s']} answers/s"),
        ("errors", rep["errors"]),
        ("leaks (boxes + histories)", f"{rep['leaks']} ({rep['leaked_box_answers']} + {rep['history_problems']}); "
                                      f"{rep['boxes_checked']} boxes checked"),
        ("replay mismatches", f"{rep['replay_mismatches']} of {rep['replayed']}"),
        ("latency p50 / p95", f"{lat['p50']} / {lat['p95']} ms"),
        ("server RSS warm -> end (peak)", f"{rep['rss_mb']['after_warmup']} -> {rep['rss_mb']['end']} MB "
                                          f"({rep['rss_mb']['peak']} MB), growth {rep['rss_growth']}"),
        ("pass", rep["pass"]),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60, help=f"duration of the load phase (at most {MAX_SECONDS})")
    ap.add_argument("--url", default=None, help="a running local app (default: start python app.py as its own process)")
    ap.add_argument("--in-process", action="store_true", help="serve from this process (RSS then includes the clients)")
    ap.add_argument("--model", default="tiny", help="preset, checkpoint folder or hub id (in-process only)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--max-requests", type=int, default=1000, help="per user")
    ap.add_argument("--replay", type=int, default=1, help="requests per user sent again to check determinism")
    ap.add_argument("--max-batch-size", type=int, default=None,
                    help="the served app's --max-batch-size (1: unbatched; default: the app's, 16)")
    ap.add_argument("--compare-batching", action="store_true",
                    help="run unbatched (max batch 1), then batched (--batch-size) in one invocation")
    ap.add_argument("--batch-size", type=int, default=BATCHED, help="the batched server's max batch (--compare-batching)")
    ap.add_argument("--skip-overlays", action="store_true",
                    help="clients do not download the overlay PNG of each answer (less client CPU on a shared machine)")
    ap.add_argument("--out", default=None, help="default bench/results/load_test.json, or "
                                                "bench/results/load_test_batched.json with --compare-batching")
    a = ap.parse_args(argv)
    if a.users < 1:
        ap.error("--users must be at least 1")
    if a.url is not None and urlparse(a.url).hostname not in ("127.0.0.1", "localhost"):
        ap.error(f"--url must be a local server (127.0.0.1 or localhost); got {a.url}")
    for name in ("max_batch_size", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(a, name)}")
    if a.compare_batching and (a.url is not None or a.max_batch_size is not None):
        ap.error("--compare-batching starts its own two servers: no --url, no --max-batch-size (use --batch-size)")
    kw = dict(users=a.users, seconds=a.seconds, model=a.model, device=a.device, max_requests=a.max_requests,
              replay_per_user=a.replay, in_process=a.in_process, overlays=not a.skip_overlays)
    if a.compare_batching:
        rep = compare_batching(a.batch_size, **kw)
        rep["command"] = "python bench/load_test.py " + " ".join(sys.argv[1:] if argv is None else argv)
        shown, default = comparison_table(rep), "bench/results/load_test_batched.json"
    else:
        rep = run_load(url=a.url, max_batch=a.max_batch_size, **kw)
        shown, default = table(rep), "bench/results/load_test.json"
    out = Path(a.out or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    print(shown)
    print(f"written: {out}")
    return 0 if rep["pass"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
