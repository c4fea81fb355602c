//! Chunk-size measurement behind `carto::DEFAULT_CHUNK_SIZE` (ignored by default):
//!
//! ```text
//! cargo test -p carto --release --test it chunk_size_measurement -- --ignored --nocapture
//! ```
//!
//! Uploads the same generated rows with each chunk size, gzip level 1, and prints wall time
//! and this process's CPU time (client and in-process server; PostgreSQL is another
//! process and not counted).

use std::fmt::Write as _;
use std::time::Instant;

use bytes::{BufMut, BytesMut};

use crate::support::{create, setup};

const TOTAL: u64 = 200 * 1000 * 1000;

/// user + system CPU seconds of this process, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the whole line (utime, stime) are 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// CSV-like rows (an id, a number, a WKT point, some text), compressing about as real data.
fn rows() -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    futures::stream::unfold((0u64, 0u64), |(sent, row)| async move {
        if sent >= TOTAL {
            return None;
        }
        let mut chunk = BytesMut::with_capacity(64 * 1024 + 256);
        let mut row = row;
        while chunk.len() < 64 * 1024 {
            let mut line = String::new();
            let x = (row.wrapping_mul(2654435761) % 360_000) as f64 / 1000.0 - 180.0;
            let y = (row.wrapping_mul(40503) % 170_000) as f64 / 1000.0 - 85.0;
            let _ = writeln!(
                line,
                "{row}\t{}\tSRID=4326;POINT({x} {y})\tstation {} reading {}",
                row % 977,
                row % 3001,
                row.wrapping_mul(7919) % 100_000
            );
            chunk.put_slice(line.as_bytes());
            row += 1;
        }
        let len = chunk.len() as u64;
        Some((Ok(chunk.freeze()), (sent + len, row)))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, minutes long; run it by name with --ignored"]
async fn chunk_size_measurement() {
    let (_server, _user, client) = setup().await;
    create(
        &client,
        "CREATE UNLOGGED TABLE bench (id bigint, n int, geom text, note text)",
    )
    .await;
    eprintln!("chunk size | wall s | MB/s | process CPU s");
    for size in [8 * 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024] {
        client.sql().send("TRUNCATE bench").await.unwrap();
        let copy = client.copy().with_chunk_size(size);
        let cpu = cpu_seconds();
        let started = Instant::now();
        copy.copy_from_stream("COPY bench FROM STDIN", rows())
            .await
            .unwrap();
        let wall = started.elapsed().as_secs_f64();
        eprintln!(
            "{:>7} KiB | {wall:6.2} | {:5.1} | {:6.2}",
            size / 1024,
            TOTAL as f64 / 1e6 / wall,
            cpu_seconds() - cpu
        );
    }
}

/// The client's own CPU per GB uploaded, against a server in another process (so this
/// process's CPU is the client's alone). Needs `CARTO_API_URL` and `CARTO_API_KEY`:
///
/// ```text
/// CARTO_API_URL=http://127.0.0.1:8080/user/alice/ CARTO_API_KEY=... \
///   cargo test -p carto --release --test it client_cpu_per_gigabyte -- --ignored --nocapture
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against an external server; run it by name with --ignored"]
async fn client_cpu_per_gigabyte() {
    let Ok(client) = carto::Client::from_env() else {
        eprintln!("CARTO_API_URL / CARTO_API_KEY not set: nothing measured");
        return;
    };
    create(
        &client,
        "DROP TABLE IF EXISTS bench_cpu; \
         CREATE UNLOGGED TABLE bench_cpu (id bigint, n int, geom text, note text)",
    )
    .await;
    // The rows are generated in this process: measure that alone, to subtract it.
    let cpu = cpu_seconds();
    let generated = futures::StreamExt::fold(rows(), 0usize, |n, c| async move {
        n + c.map(|c| c.len()).unwrap_or(0)
    })
    .await;
    eprintln!(
        "generating {:.0} MB alone: {:.2} CPU s",
        generated as f64 / 1e6,
        cpu_seconds() - cpu
    );
    eprintln!("compression | wall s | client CPU s | CPU s per GB");
    for (name, copy) in [
        ("gzip 1", client.copy()),
        ("none", client.copy().without_compression()),
    ] {
        client.sql().send("TRUNCATE bench_cpu").await.unwrap();
        let cpu = cpu_seconds();
        let started = Instant::now();
        copy.copy_from_stream("COPY bench_cpu FROM STDIN", rows())
            .await
            .unwrap();
        let used = cpu_seconds() - cpu;
        eprintln!(
            "{name:>11} | {:6.2} | {used:6.2} | {:6.2}",
            started.elapsed().as_secs_f64(),
            used / (TOTAL as f64 / 1e9)
        );
    }
    client.sql().send("DROP TABLE bench_cpu").await.unwrap();
}

/// The row writer's client CPU per million rows (serde → COPY text, a point as hex EWKB),
/// against a server in another process. Needs `CARTO_API_URL` and `CARTO_API_KEY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement against an external server; run it by name with --ignored"]
async fn row_writer_cpu_per_million_rows() {
    #[derive(serde::Serialize)]
    struct Echo {
        id: u64,
        name: String,
        value: f64,
        the_geom: carto::Point,
    }
    let Ok(client) = carto::Client::from_env() else {
        eprintln!("CARTO_API_URL / CARTO_API_KEY not set: nothing measured");
        return;
    };
    create(
        &client,
        "DROP TABLE IF EXISTS bench_rows; \
         CREATE UNLOGGED TABLE bench_rows (id bigint, name text, value float8, the_geom geometry)",
    )
    .await;
    let n = 1_000_000u64;
    let rows = futures::stream::iter((0..n).map(|i| Echo {
        id: i,
        name: format!("echo {i}"),
        value: i as f64 / 7.0,
        the_geom: carto::Point::new(-3.7 + i as f64 / 1e7, 40.4),
    }));
    let cpu = cpu_seconds();
    let started = Instant::now();
    let outcome = client
        .copy()
        .copy_from_rows("bench_rows", &["id", "name", "value", "the_geom"], rows)
        .await
        .unwrap();
    eprintln!(
        "{} rows in {:.2} s wall, {:.2} client CPU s",
        outcome.total_rows,
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    client.sql().send("DROP TABLE bench_rows").await.unwrap();
}
