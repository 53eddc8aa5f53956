//! A small closed-loop HTTP load generator for `tasker serve` (issue 11's benchmark):
//! `--connections` clients each send the next request as soon as the previous one answered,
//! for `--seconds`; prints requests/s and latency percentiles of the answers, and fails on any
//! unexpected status.
//!
//!   http_load --url http://127.0.0.1:8080/tasks/1 [--method GET|POST] [--body JSON]
//!             [--connections 16] [--seconds 10] [--expect 200]
//!
//! `{i}` in the body is replaced by a counter (unique idempotency keys or contexts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let mut url = String::new();
    let mut method = "GET".to_owned();
    let mut body: Option<String> = None;
    let mut connections = 16usize;
    let mut seconds = 10.0f64;
    let mut expect: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = v(),
            "--method" => method = v(),
            "--body" => body = Some(v()),
            "--connections" => connections = v().parse().expect("--connections"),
            "--seconds" => seconds = v().parse().expect("--seconds"),
            "--expect" => expect = v().parse().expect("--expect"),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2)
            }
        }
    }
    assert!(!url.is_empty(), "--url is required");
    if expect == 0 {
        expect = if method == "POST" { 201 } else { 200 };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let lat: Vec<Vec<f64>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (client, url, method, body, counter, errors) = (
                client.clone(),
                url.clone(),
                method.clone(),
                body.clone(),
                counter.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let mut req = client.request(method.parse().unwrap(), &url);
                    if let Some(b) = &body {
                        req = req
                            .header("content-type", "application/json")
                            .body(b.replace("{i}", &i.to_string()));
                    }
                    let t0 = Instant::now();
                    match req.send().await {
                        Ok(r) => {
                            let st = r.status().as_u16();
                            let _ = r.bytes().await;
                            if st != expect {
                                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                    eprintln!("unexpected status {st}");
                                }
                                continue;
                            }
                            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("request failed: {e}");
                            }
                        }
                    }
                }
                lat
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all: Vec<f64> = lat.into_iter().flatten().collect();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct =
        |p: f64| all[((p / 100.0 * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
    let errs = errors.load(Ordering::Relaxed);
    println!(
        "{method} {url}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} answers, {errs} errors, {connections} connections, {seconds} s",
        all.len() as f64 / elapsed,
        pct(50.0),
        pct(99.0),
        all.len()
    );
    if errs > 0 {
        std::process::exit(1);
    }
}
