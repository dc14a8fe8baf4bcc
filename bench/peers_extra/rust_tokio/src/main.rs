// Tokio peer for the orchestration-runtime anchor benchmarks.
// usage: tokio_bench <ct|mt> <workload> <n>
//   workloads: spawn_join, sem_contention, timers, deadline_fanout, deadline_fanout_sleep0,
//   channel
// (baton's copy of the shared peer, with the `channel` workload added: bench/README.md)
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

fn peak_rss_kb() -> i64 {
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss as i64
    }
}

// W1: spawn n no-op tasks into one JoinSet, then join all.
async fn spawn_join(n: u64) -> u64 {
    let mut set = JoinSet::new();
    for _ in 0..n {
        set.spawn(async {});
    }
    let mut done = 0u64;
    while let Some(r) = set.join_next().await {
        r.unwrap();
        done += 1;
    }
    done
}

// W2: n tasks, each acquire(sem of 8) -> yield_now -> release.
async fn sem_contention(n: u64) -> u64 {
    let sem = Arc::new(Semaphore::new(8));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            tokio::task::yield_now().await;
            // permit released on drop
        });
    }
    let mut done = 0u64;
    while let Some(r) = set.join_next().await {
        r.unwrap();
        done += 1;
    }
    assert_eq!(sem.available_permits(), 8);
    done
}

// W3: n concurrent tasks each sleeping LCG-derived 0..100 ms.
async fn timers(n: u64) -> u64 {
    let mut x: u64 = 42;
    let mut sum: u64 = 0;
    let mut set = JoinSet::new();
    for _ in 0..n {
        x = (x.wrapping_mul(1103515245).wrapping_add(12345)) % (1u64 << 31);
        let d = x % 101;
        sum += d;
        set.spawn(async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    sum
}

// W4: rounds; each spawns 8 tasks (yield or sleep 0) collected under one 50 ms deadline.
async fn deadline_fanout(rounds: u64, sleep0: bool) -> u64 {
    let mut timeouts = 0u64;
    for _ in 0..rounds {
        let mut set = JoinSet::new();
        for _ in 0..8 {
            if sleep0 {
                set.spawn(async { tokio::time::sleep(Duration::from_millis(0)).await });
            } else {
                set.spawn(async { tokio::task::yield_now().await });
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut got = 0;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Ok(Some(r)) => {
                    r.unwrap();
                    got += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    timeouts += 1;
                    set.abort_all();
                    break;
                }
            }
        }
        let _ = got;
    }
    timeouts
}

// W5: one producer task and one consumer task pass n integers through an mpsc channel of
// capacity 64; the check is how many the consumer received.
async fn channel(n: u64) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(64);
    let producer = tokio::spawn(async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    let consumer = tokio::spawn(async move {
        let mut got = 0u64;
        while let Some(_v) = rx.recv().await {
            got += 1;
        }
        got
    });
    producer.await.unwrap();
    consumer.await.unwrap()
}

async fn body(workload: String, n: u64) -> u64 {
    match workload.as_str() {
        "spawn_join" => spawn_join(n).await,
        "sem_contention" => sem_contention(n).await,
        "timers" => timers(n).await,
        "deadline_fanout" => deadline_fanout(n, false).await,
        "deadline_fanout_sleep0" => deadline_fanout(n, true).await,
        "channel" => channel(n).await,
        w => panic!("unknown workload {w}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flavor = args[1].clone();
    let workload = args[2].clone();
    let n: u64 = args[3].parse().unwrap();
    let rt = match flavor.as_str() {
        "ct" => tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap(),
        "mt" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap(),
        f => panic!("unknown flavor {f}"),
    };
    let t0 = Instant::now();
    let check = if flavor == "mt" {
        // run the benchmark body on a worker thread (block_on's own thread is not a worker)
        let w = workload.clone();
        rt.block_on(async move { tokio::spawn(body(w, n)).await.unwrap() })
    } else {
        rt.block_on(body(workload.clone(), n))
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"peer\":\"tokio-{}\",\"workload\":\"{}\",\"n\":{},\"seconds\":{:.6},\"ops_per_s\":{:.1},\"peak_rss_kb\":{},\"check\":{}}}",
        flavor, workload, n, secs, n as f64 / secs, peak_rss_kb(), check
    );
    drop(rt);
}
