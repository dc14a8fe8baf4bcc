#!/usr/bin/env python3
"""Runs baton's workloads beside the peers' (in PEERS_DIR), REPS times each, one at a
time, and prints medians with ratios against Tokio current-thread from the same go.
Peak RSS comes from /usr/bin/time. usage: compare.py BATON_EXE PEERS_DIR [--reps 3]
[--only baton,tokio-ct,...]"""
import argparse, json, os, statistics, subprocess, sys, tempfile

W = [("spawn_join", 1_000_000), ("sem_contention", 1_000_000),
     ("sem_contention_acquire", 1_000_000), ("timers", 100_000),
     ("deadline_fanout", 10_000), ("deadline_fanout_sleep0", 10_000),
     ("channel", 1_000_000)]  # W5: Tokio only (bench/peers_extra), the other peers lack it
PEER_W = {"sem_contention_acquire": "sem_contention"}   # the peers' own form of W2


def peers(baton, pdir, bench):
    tokio = os.path.join(pdir, "rust_tokio/target/release/tokio_bench")
    out = [("baton", lambda w, n: [baton, bench, w, str(n)])]
    if os.path.exists(tokio):
        out.append(("tokio-ct", lambda w, n: [tokio, "ct", PEER_W.get(w, w), str(n)]))
    out.append(("lua54-luv", lambda w, n: ["lua5.4", f"{pdir}/lua_luv/bench.lua", PEER_W.get(w, w), str(n)]))
    if subprocess.run(["sh", "-c", "command -v node"], capture_output=True).returncode == 0:
        out.append(("node", lambda w, n: ["node", f"{pdir}/node/bench.js", PEER_W.get(w, w), str(n)]))
    out.append(("python-asyncio", lambda w, n: ["python3", f"{pdir}/python_asyncio/bench.py", PEER_W.get(w, w), str(n)]))
    return out


def run(cmd):
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        p = subprocess.run(["timeout", "120", "/usr/bin/time", "-f", "%M", "-o", tf.name] + cmd,
                           capture_output=True, text=True)
        line = next((l for l in p.stdout.splitlines() if l.startswith("{")), None)
        if p.returncode != 0 or line is None:
            return None
        rec = json.loads(line)
        try:
            rec["rss_kb"] = int(tf.read().strip().splitlines()[-1])
        except Exception:
            rec["rss_kb"] = 0
        return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("baton")
    ap.add_argument("peers_dir")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.lua")
    only = set(filter(None, a.only.split(",")))
    ps = [p for p in peers(a.baton, a.peers_dir, bench) if not only or p[0] in only]
    res = {}
    for rep in range(a.reps):   # interleaved: every peer sees the same machine noise
        for w, n in W:
            for name, mk in ps:
                if name != "baton" and w in PEER_W:
                    continue  # the peers run their one W2 form once
                r = run(mk(w, n))
                key = (name, PEER_W.get(w, w) if name != "baton" else w)
                res.setdefault(key, []).append(r)
                s = f"{r['seconds']:.4f}s {r['rss_kb']//1024}MiB" if r else "failed"
                print(f"rep{rep+1} {name:15s} {w:24s} {s}", file=sys.stderr, flush=True)

    def med(name, w, k):
        v = [r[k] for r in res.get((name, w), []) if r]
        return statistics.median(v) if v else None

    names = [p[0] for p in ps]
    print(f"\nmedians of {a.reps} (ops/s; W3 as wall seconds; peak RSS MiB)\n")
    print("| workload | " + " | ".join(names) + " | baton / tokio-ct |")
    print("|---" * (len(names) + 2) + "|")
    for w, n in W:
        cells, pw = [], PEER_W.get(w, w)
        for name in names:
            ww = w if name == "baton" else pw
            s, ops, rss = med(name, ww, "seconds"), med(name, ww, "ops_per_s"), med(name, ww, "rss_kb")
            if s is None:
                cells.append("—")
            elif w == "timers":
                cells.append(f"{s:.3f} s · {rss/1024:.0f}")
            else:
                cells.append(f"{ops/1e3:.0f} k · {rss/1024:.0f}")
        ratio = "—"
        b, t = med("baton", w, "seconds"), med("tokio-ct", pw, "seconds")
        if b and t:
            ratio = f"{b/t:.2f}× time" if w == "timers" else f"{t/b:.2f}× rate"
        print(f"| {w} ({n}) | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
