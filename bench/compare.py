#!/usr/bin/env python3
"""Runs baton's workloads beside the peers' (in PEERS_DIR), REPS times each, one process at a
time and interleaved (every runtime sees the same machine noise), each pinned to one core
(taskset -c CPU), and prints medians with ratios from the same go. baton runs twice: the
executable (`baton`) and the module in a stock interpreter (`lua5.4` with baton.so, column
`baton.so`). Above the table: the machine, its transparent-huge-page mode and what a first
touch of a fresh 4 KiB page costs on it (the peers' c_floor/pagefault_cost), since the
million-task workloads are bound by bytes as much as by instructions. Peak RSS comes from
/usr/bin/time.

usage: compare.py BATON_EXE PEERS_DIR [--reps 5] [--cpu 1] [--only baton,tokio-ct,...]
       [--json FILE]   (also writes every run as one JSON line to FILE)"""
import argparse, json, os, platform, statistics, subprocess, sys, tempfile, time

# (name in bench.lua, label, n, the peers' workload)
W = [("spawn_join", "W1", 1_000_000, "spawn_join"),
     ("sem_contention", "W2", 1_000_000, "sem_contention"),
     ("sem_contention_bounded", "W2b", 1_000_000, "sem_contention"),
     ("timers", "W3", 100_000, "timers"),
     ("deadline_fanout", "W4", 10_000, "deadline_fanout"),
     ("deadline_fanout_sleep0", "W4b", 10_000, "deadline_fanout_sleep0"),
     ("channel", "W5", 1_000_000, "channel"),
     ("channel_batch", "W5b", 1_000_000, "channel")]
ONLY_TOKIO = {"W5", "W5b"}  # the channel workload exists in baton and the Tokio peer only (peers_extra)
TIME_WORKLOADS = {"timers"}  # compared by wall time (lower is better), not by rate


def have(cmd):
    return subprocess.run(["sh", "-c", f"command -v {cmd}"], capture_output=True).returncode == 0


def runtimes(baton, pdir, bench):
    so_dir = os.path.dirname(os.path.abspath(baton))
    mod_env = {"LUA_CPATH": f"{so_dir}/?.so;;"}
    tokio = os.path.join(pdir, "rust_tokio/target/release/tokio_bench")
    out = [("baton", lambda w, n: [baton, bench, w, str(n)], None),
           ("baton.so", lambda w, n: ["lua5.4", bench, w, str(n)], mod_env)]
    if os.path.exists(tokio):
        out.append(("tokio-ct", lambda w, n: [tokio, "ct", w, str(n)], None))
    else:
        print("tokio peer not built: baton alone against the others", file=sys.stderr)
    out.append(("lua54-luv", lambda w, n: ["lua5.4", f"{pdir}/lua_luv/bench.lua", w, str(n)], None))
    if have("node"):
        out.append(("node", lambda w, n: ["node", f"{pdir}/node/bench.js", w, str(n)], None))
    out.append(("python-asyncio",
                lambda w, n: ["python3", f"{pdir}/python_asyncio/bench.py", w, str(n)], None))
    return out


def run(cmd, cpu, env=None):
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        e = dict(os.environ, **(env or {}))
        p = subprocess.run(["timeout", "120", "/usr/bin/time", "-f", "%M", "-o", tf.name,
                            "taskset", "-c", str(cpu)] + cmd,
                           capture_output=True, text=True, env=e)
        line = next((l for l in p.stdout.splitlines() if l.startswith("{")), None)
        if p.returncode != 0 or line is None:
            return None
        rec = json.loads(line)
        try:
            rec["rss_kb"] = int(tf.read().strip().splitlines()[-1])
        except Exception:
            rec["rss_kb"] = 0
        return rec


def machine(pdir, cpu):
    """One line: CPU, cores, kernel, THP mode, and the 4 KiB first-touch fault cost."""
    model = "unknown CPU"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                model = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
        thp = next((w[1:-1] for w in thp.split() if w.startswith("[")), thp)
    except OSError:
        thp = "unknown"
    fault = "not measured (c_floor/pagefault_cost not built)"
    pf = os.path.join(pdir, "c_floor/pagefault_cost")
    if os.path.exists(pf):
        ns = []
        for _ in range(3):
            r = run([pf, "256"], cpu)
            if r:
                ns.append(r["ns_per_page_fault"])
        if ns:
            fault = f"{statistics.median(ns):,.0f} ns (median of {len(ns)}: " \
                    + ", ".join(f"{x:,.0f}" for x in ns) + ")"
    return (f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
            f"THP {thp}; 4 KiB first-touch fault {fault}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("baton")
    ap.add_argument("peers_dir")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.lua")
    only = set(filter(None, a.only.split(",")))
    rts = [r for r in runtimes(a.baton, a.peers_dir, bench) if not only or r[0] in only]
    head = machine(a.peers_dir, a.cpu)
    print(head, file=sys.stderr, flush=True)
    jf = open(a.json, "a") if a.json else None
    res = {}
    for rep in range(a.reps):   # interleaved: every runtime sees the same machine noise
        for w, label, n, pw in W:
            for name, mk, env in rts:
                is_baton = name.startswith("baton")
                if not is_baton and label == "W2b":
                    continue  # the peers have one W2; W2b is compared with it
                if label in ONLY_TOKIO and not (is_baton or name == "tokio-ct"):
                    continue
                r = run(mk(w if is_baton else pw, n), a.cpu, env)
                res.setdefault((name, label), []).append(r)
                if jf and r:
                    jf.write(json.dumps(dict(r, runtime=name, label=label, rep=rep + 1)) + "\n")
                s = f"{r['seconds']:.4f}s {r['rss_kb']//1024}MiB" if r else "failed"
                print(f"rep{rep+1} {name:15s} {label:4s} {s}", file=sys.stderr, flush=True)

    def med(name, label, k):
        if not name.startswith("baton") and label == "W2b":
            label = "W2"
        v = [r[k] for r in res.get((name, label), []) if r]
        return statistics.median(v) if v else None

    def ratio(w, b, p):
        """baton (b) against peer (p): rate ratio (p_time / b_time), or time ratio for W3."""
        tb, tp = med(b, w, "seconds"), med(p, w, "seconds")
        if not tb or not tp:
            return "—"
        return f"{tb/tp:.2f}" if w == "W3" else f"{tp/tb:.2f}"

    names = [r[0] for r in rts]
    print(f"\n{head}")
    print(f"medians of {a.reps}, every process pinned to CPU {a.cpu} (taskset); "
          "k ops/s · peak RSS MiB (W3: wall seconds · MiB); ratios: rate (× faster), "
          "W3 time (× the peer's wall)\n")
    peers = [p for p in ("tokio-ct", "node", "lua54-luv") if p in names]
    cols = []
    for b in ("baton", "baton.so"):
        if b in names:
            cols += [(b, p) for p in peers]
    if "baton" in names and "baton.so" in names:
        cols.append(("baton.so", "baton"))
    short = {"baton": "exe", "baton.so": ".so", "tokio-ct": "Tokio", "node": "Node",
             "lua54-luv": "luv"}
    print("| workload | " + " | ".join(names) + " | "
          + " | ".join(f"{short[b]} / {short[p]}" for b, p in cols) + " |")
    print("|---" * (1 + len(names) + len(cols)) + "|")
    for w, label, n, _ in W:
        cells = []
        for name in names:
            s, ops, rss = med(name, label, "seconds"), med(name, label, "ops_per_s"), \
                med(name, label, "rss_kb")
            if s is None:
                cells.append("—")
            elif w in TIME_WORKLOADS:
                cells.append(f"{s:.3f} s · {rss/1024:.0f}")
            else:
                cells.append(f"{ops/1e3:.0f} k · {rss/1024:.0f}")
        rs = []
        for b, p in cols:
            if p == "baton":  # the module against the executable: time ratio
                tb, tp = med(b, label, "seconds"), med(p, label, "seconds")
                rs.append(f"{tb/tp:.2f} time" if tb and tp else "—")
            else:
                rs.append(ratio(label, b, p))
        print(f"| {label} {w} ({n:,}) | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")


if __name__ == "__main__":
    main()
