#!/usr/bin/env python3
"""Reliability campaign against the release binary (Python standard library only; loopback only).

    python3 scripts/measure/reliability.py --bin BIN --model DIR --graft GOOD.graft [--ckpt FINETUNED_DIR] [--only CLASS,...]

Each class prints one JSON line: {"class", "cases", "clean_4xx", "5xx", "crash_or_hang", "data_lost", ...}.
Classes: graft_mutation, checkpoint_mutation, request_bodies, same_name_writes, kill9, overload.
GOOD.graft is any valid graft for the model (e.g. from `skillgraft localize`, or a task's
GET /v1/tasks/{name}/graft). Every loop is bounded in count and time.
"""

import argparse
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

ADMIN = "rel-admin"
READER = "rel-reader"


class Server:
    def __init__(self, bin_, model, state, extra=()):
        self.args = [bin_, "serve", "--addr", "127.0.0.1:0", "--model", model, "--state-dir", state,
                     "--api-key", READER, "--admin-key", ADMIN, *extra]
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            if line.startswith("skillgraft listening on http://"):
                self.host, port = line.strip().split("http://")[1].split(":")
                self.port = int(port)
                threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
                return
        raise RuntimeError("server did not start")

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(self, method, path, body=b"", ctype="application/json", key=ADMIN, timeout=120):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = {"Content-Type": ctype}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            return r.status, r.read(), dict(r.getheaders())
        finally:
            c.close()


class Tally:
    def __init__(self, name):
        self.name, self.cases, self.clean, self.ok, self.e5, self.crash, self.lost = name, 0, 0, 0, 0, 0, 0
        self.notes = []

    def status(self, st, body=b""):
        self.cases += 1
        if 200 <= st < 300:
            self.ok += 1
        elif 400 <= st < 500:
            try:
                json.loads(body)["error"]["code"]
                self.clean += 1
            except Exception:  # a 4xx that is not our JSON counts as not clean
                self.notes.append(f"non-JSON {st}")
        else:
            self.e5 += 1
            self.notes.append(f"{st}: {body[:200]!r}")

    def report(self, **extra):
        d = {"class": self.name, "cases": self.cases, "2xx": self.ok, "clean_4xx": self.clean, "5xx": self.e5,
             "crash_or_hang": self.crash, "data_lost": self.lost, **extra}
        if self.notes:
            d["notes"] = self.notes[:5]
        print(json.dumps(d), flush=True)


def finite_predict(s, task):
    st, body, _ = s.call("POST", f"/v1/tasks/{task}/predict", json.dumps({"inputs": ["a fine film"]}).encode(),
                         key=READER)
    if st == 200:
        for p in json.loads(body)["predictions"]:
            for v in p["probabilities"].values():
                if not isinstance(v, float):
                    return 599, body
    return st, body


def mutate(data, rng):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2 and b:
            del b[rng.randrange(len(b)):]
        elif op == 3:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and len(b) > 8:
            # Inside the safetensors JSON header: digits and quotes are where the structure is.
            n = int.from_bytes(b[:8], "little")
            if 8 < n + 8 <= len(b):
                i = rng.randrange(8, 8 + n)
                b[i] = rng.choice(b'0123456789-.e"[]{},:')
        elif op == 5 and b:
            i = rng.randrange(len(b))
            b[i:i + 4] = rng.choice([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\x7f\x7f"])
    return bytes(b)


def graft_mutation(a, rng, work):
    t = Tally("graft_mutation")
    s = Server(a.bin, a.model, os.path.join(work, "state"))
    good = open(a.graft, "rb").read()
    assert s.call("PUT", "/v1/tasks/good/graft", good, "application/octet-stream")[0] == 200
    for i in range(a.n_graft):
        st, body, _ = s.call("PUT", "/v1/tasks/m/graft", mutate(good, rng), "application/octet-stream")
        t.status(st, body)
        if st == 200:
            for task in ("m", "good"):
                st2, b2 = finite_predict(s, task)
                if st2 >= 500:
                    t.e5 += 1
                    t.notes.append(f"predict {task} after accepted mutation: {st2} {b2[:200]!r}")
        if not s.alive():
            t.crash += 1
            s.start()
    st, _ = finite_predict(s, "good")
    if st != 200:
        t.lost += 1
    s.stop()
    t.report()


def tar_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, kind in entries:
            ti = tarfile.TarInfo(name)
            if kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, data.decode()
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def checkpoint_mutation(a, rng, work):
    t = Tally("checkpoint_mutation")
    s = Server(a.bin, a.model, os.path.join(work, "state"), ["--max-upload-bytes", "200000000"])
    config = open(os.path.join(a.model, "config.json"), "rb").read()
    st_path = os.path.join(a.model, "model.safetensors")
    with open(st_path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little")
        header = head + f.read(n)
    bases = [
        [("ckpt/config.json", config, "f"), ("ckpt/model.safetensors", header + b"\0" * 1024, "f")],
        [("ckpt/config.json", config, "f"), ("ckpt/pytorch_model.bin", b"\x80\x02", "f")],
        [("../../etc/config.json", config, "f"), ("/abs/model.safetensors", header, "f")],
        [("ckpt/config.json", b"/etc/passwd", "sym"), ("ckpt/model.safetensors", header, "f")],
        [(f"ckpt/junk{i}.safetensors", b"x", "f") for i in range(200)],
        [("a/config.json", config, "f"), ("b/config.json", config, "f")],
    ]
    for i in range(a.n_ckpt):
        entries = list(rng.choice(bases))
        if rng.random() < 0.7:
            j = rng.randrange(len(entries))
            name, data, kind = entries[j]
            if kind == "f":
                entries[j] = (name, mutate(data, rng), kind)
        body = tar_bytes(entries)
        if rng.random() < 0.3:
            body = mutate(body, rng)
        st, resp, _ = s.call("POST", "/v1/checkpoints", body, "application/x-tar")
        t.status(st, resp)
        if st < 500 and st >= 400 and (work.encode() in resp or b"/tmp/" in resp):
            t.notes.append(f"server path in message: {resp[:200]!r}")
            t.e5 += 1
        if not s.alive():
            t.crash += 1
            s.start()
    left = os.listdir(os.path.join(work, "state", "tmp"))
    ckpts = os.listdir(os.path.join(work, "state", "checkpoints"))
    s.stop()
    t.report(scratch_left=len(left), checkpoints_stored=len(ckpts))


def rand_json(rng, depth=0):
    k = rng.randrange(8 if depth < 3 else 5)
    if k == 0:
        return None
    if k == 1:
        return rng.choice([True, False])
    if k == 2:
        return rng.choice([0, -1, 1, 2**63, 1e308, -1e-300, 0.5, 10**30])
    if k == 3:
        return rng.choice(["", "x", "sst2", "a" * 5000, "\u00e9\u0000\ud7ff", "negative", "../../x", "mean"])
    if k == 4:
        return []
    if k == 5:
        return [rand_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["inputs", "examples", "label", "text", "text_b", "bins", "calibrate", "name", "tasks", "rule", "data",
            "checkpoint", "task_name", "task", "k", "epochs", "sparsity", "train", "dev", "method", "return_logits"]
    return {rng.choice(keys): rand_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def request_bodies(a, rng, work):
    t = Tally("request_bodies")
    s = Server(a.bin, a.model, os.path.join(work, "state"))
    good = open(a.graft, "rb").read()
    for name in ("a", "b"):
        assert s.call("PUT", f"/v1/tasks/{name}/graft", good, "application/octet-stream")[0] == 200
    valid = {
        "/v1/tasks/a/predict": {"inputs": ["fine", {"text": "x"}]},
        "/v1/tasks/a/evaluate": {"examples": [{"text": "x", "label": 1}], "bins": 3},
        "/v1/compositions": {"name": "c", "tasks": ["a", "b"], "data": {"a": [{"text": "x", "label": 0}]}},
        "/v1/localizations": {"checkpoint": "nope", "task_name": "t", "task": "sst2"},
    }
    for i in range(a.n_bodies):
        path = rng.choice(list(valid) + ["/v1/overlap"])
        if path == "/v1/overlap":
            q = ",".join(rng.choice(["a", "b", "", "zz", "a%20b", "%2C"]) for _ in range(rng.randrange(40)))
            st, body, _ = s.call("GET", f"/v1/overlap?tasks={q}", key=READER)
        else:
            doc = json.loads(json.dumps(valid[path]))
            if rng.random() < 0.5:
                doc = rand_json(rng)
            elif isinstance(doc, dict):
                doc[rng.choice(list(doc))] = rand_json(rng)
            raw = json.dumps(doc).encode()
            if rng.random() < 0.2:
                raw = mutate(raw, rng)
            st, body, _ = s.call("POST", path, raw, rng.choice(["application/json"] * 9 + ["text/plain"]))
        t.status(st, body)
        if not s.alive():
            t.crash += 1
            s.start()
    s.stop()
    t.report()


def graft_variants(a, n):
    """n valid, distinct grafts: the good one with its metadata's creation time changed."""
    good = open(a.graft, "rb").read()
    n_hdr = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + n_hdr])
    out = []
    for i in range(n):
        meta = json.loads(header["__metadata__"]["skillgraft"])
        meta["created_unix"] = 1000 + i
        h = dict(header)
        h["__metadata__"] = dict(header["__metadata__"], skillgraft=json.dumps(meta))
        hb = json.dumps(h).encode()
        hb += b" " * ((8 - len(hb) % 8) % 8)
        out.append(len(hb).to_bytes(8, "little") + hb + good[8 + n_hdr:])
    return out


def same_name_writes(a, rng, work):
    t = Tally("same_name_writes")
    state = os.path.join(work, "state")
    s = Server(a.bin, a.model, state)
    uploads = graft_variants(a, 8)
    for rnd in range(a.rounds):
        res = [None] * 8

        def put(i):
            res[i] = s.call("PUT", "/v1/tasks/t0/graft", uploads[i], "application/octet-stream")

        th = [threading.Thread(target=put, args=(i,)) for i in range(8)]
        [x.start() for x in th]
        [x.join() for x in th]
        for st, body, _ in res:
            t.status(st, body)
        stored = open(os.path.join(state, "tasks", "t0.graft"), "rb").read()
        st, served, _ = s.call("GET", "/v1/tasks/t0/graft", key=READER)
        if stored not in uploads or served != stored:
            t.lost += 1
    s.stop()
    s.start()
    st, served, _ = s.call("GET", "/v1/tasks/t0/graft", key=READER)
    if st != 200 or served not in uploads:
        t.lost += 1
    temps = [f for f in os.listdir(os.path.join(state, "tasks")) if f.startswith(".")]
    s.stop()
    t.report(rounds=a.rounds, writers=8, temp_files_left=len(temps))


def kill9(a, rng, work):
    t = Tally("kill9_during_writes_and_jobs")
    state = os.path.join(work, "state")
    s = Server(a.bin, a.model, state)
    uploads = graft_variants(a, 4)
    acked = {}
    lock = threading.Lock()
    ckpt = None
    if a.ckpt:
        st, body, _ = s.call("POST", "/v1/checkpoints", ckpt_tar(a.ckpt), "application/x-tar")
        assert st == 201, body
        ckpt = json.loads(body)["id"]
    for rnd in range(a.kills):
        stop = threading.Event()

        def writer(w):
            while not stop.is_set():
                i = rng.randrange(len(uploads))
                try:
                    st, body, _ = s.call("PUT", f"/v1/tasks/w{w}/graft", uploads[i], "application/octet-stream",
                                         timeout=10)
                except Exception:
                    return
                with lock:
                    t.status(st, body)
                    if st == 200:
                        acked.setdefault(f"w{w}", set()).add(i)
                        acked[f"w{w}:last"] = i

        th = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        [x.start() for x in th]
        if ckpt and rnd % 2 == 0:
            # A real localization job; the kill lands while it loads, runs or registers its task.
            st, body, _ = s.call("POST", "/v1/localizations", json.dumps(
                {"checkpoint": ckpt, "task_name": f"job{rnd}", "task": "sst2", "k": 8, "max_test": 20,
                 "epochs": 2}).encode())
            t.status(st, body)
        time.sleep(rng.uniform(0.05, 1.0) if rnd % 2 else rng.uniform(0.5, 6.0))
        s.kill9()
        stop.set()
        [x.join() for x in th]
        s.start()
        for w in range(3):
            name = f"w{w}"
            if name not in acked:
                continue
            st, served, _ = s.call("GET", f"/v1/tasks/{name}/graft", key=READER)
            if st != 200 or served not in uploads:
                t.lost += 1
                t.notes.append(f"round {rnd}: {name} {st}")
        temps = [f for f in os.listdir(os.path.join(state, "tasks")) if f.startswith(".")]
        if temps:
            t.lost += 1
            t.notes.append(f"temporaries after restart: {temps}")
        for j in json.loads(s.call("GET", "/v1/localizations", key=ADMIN)[1]):
            if j["state"] in ("queued", "running"):
                t.notes.append(f"job {j['id']} still {j['state']} after restart")
                t.lost += 1
            if j["state"] == "succeeded":
                name = j["request"]["task_name"]
                if s.call("GET", f"/v1/tasks/{name}", key=READER)[0] != 200:
                    t.notes.append(f"job {j['id']} succeeded but task {name} is gone")
                    t.lost += 1
    jobs = json.loads(s.call("GET", "/v1/localizations", key=ADMIN)[1])
    s.stop()
    t.report(kills=a.kills, jobs=len(jobs), jobs_succeeded=sum(j["state"] == "succeeded" for j in jobs),
             jobs_interrupted=sum(j["state"] == "failed" for j in jobs))


def ckpt_tar(d):
    files = ["config.json", "model.safetensors", "skillgraft_head.json", "skillgraft_head.safetensors",
             "tokenizer.json"]
    return tar_bytes([(f"ckpt/{f}", open(os.path.join(d, f), "rb").read(), "f") for f in files
                      if os.path.exists(os.path.join(d, f))])


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def overload(a, rng, work):
    s = Server(a.bin, a.model, os.path.join(work, "state"))
    good = open(a.graft, "rb").read()
    assert s.call("PUT", "/v1/tasks/t/graft", good, "application/octet-stream")[0] == 200
    small = json.dumps({"inputs": ["a fine film about nothing"]}).encode()
    for clients in (64, 256):
        t = Tally(f"overload_{clients}_clients")
        lat, lock, stop = [], threading.Lock(), time.time() + a.load_seconds

        def client():
            while time.time() < stop:
                t0 = time.time()
                try:
                    st, body, _ = s.call("POST", "/v1/tasks/t/predict", small, key=READER, timeout=60)
                except Exception:
                    with lock:
                        t.crash += 1
                    continue
                with lock:
                    t.status(st, body)
                    if st == 200:
                        lat.append(time.time() - t0)
                    elif st == 429:
                        time.sleep(0.05)

        th = [threading.Thread(target=client) for _ in range(clients)]
        [x.start() for x in th]
        [x.join() for x in th]
        refused = t.clean
        t.report(share_429=round(refused / max(t.cases, 1), 3), p50_ms=round(percentile(lat, 0.5) * 1e3, 1),
                 p99_ms=round(percentile(lat, 0.99) * 1e3, 1), alive=s.alive())
    # A small request while a large one (256 texts of ~60 tokens) runs.
    large = json.dumps({"inputs": ["word " * 60] * 256}).encode()
    big = threading.Thread(target=lambda: s.call("POST", "/v1/tasks/t/predict", large, key=READER, timeout=600))
    t0 = time.time()
    big.start()
    time.sleep(0.3)
    t1 = time.time()
    st, _, _ = s.call("POST", "/v1/tasks/t/predict", small, key=READER, timeout=600)
    small_ms = (time.time() - t1) * 1e3
    big.join()
    print(json.dumps({"class": "small_behind_large", "small_status": st, "small_ms": round(small_ms, 1),
                      "large_ms": round((time.time() - t0) * 1e3, 1)}), flush=True)
    s.stop()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--graft", required=True)
    p.add_argument("--ckpt", default="", help="a fine-tuned checkpoint directory (real jobs in kill rounds)")
    p.add_argument("--only", default="")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--n-graft", type=int, default=1500)
    p.add_argument("--n-ckpt", type=int, default=300)
    p.add_argument("--n-bodies", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--kills", type=int, default=40)
    p.add_argument("--load-seconds", type=float, default=15)
    a = p.parse_args()
    classes = {"graft_mutation": graft_mutation, "checkpoint_mutation": checkpoint_mutation,
               "request_bodies": request_bodies, "same_name_writes": same_name_writes, "kill9": kill9,
               "overload": overload}
    only = [c for c in a.only.split(",") if c] or list(classes)
    for name in only:
        work = tempfile.mkdtemp(prefix=f"sg-rel-{name}-")
        try:
            classes[name](a, random.Random(a.seed), work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
