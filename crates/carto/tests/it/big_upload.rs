//! A ~500 MB upload, generated as it is sent, with the process's memory watched.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::support::{count, create, setup};

const TOTAL: u64 = 500 * 1000 * 1000;
const CHUNK: usize = 256 * 1024;

/// A `/proc/self/status` figure in bytes (it is given in kB).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[tokio::test]
async fn half_a_gigabyte_with_bounded_memory() {
    let (server, user, client) = setup().await;
    create(
        &client,
        "CREATE UNLOGGED TABLE big (i bigint, payload text)",
    )
    .await;

    // Reset the peak-RSS mark (VmHWM) so it measures this upload only.
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    let rss_before = status_bytes("VmRSS:");

    let rows = futures::stream::unfold((0u64, 0u64), |(sent, row)| async move {
        if sent >= TOTAL {
            return None;
        }
        let mut chunk = BytesMut::with_capacity(CHUNK + 128);
        let mut row = row;
        while chunk.len() < CHUNK {
            let _ = write!(chunk_writer(&mut chunk), "{row}\t");
            chunk.put_slice(
                b"lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\n",
            );
            row += 1;
        }
        let len = chunk.len() as u64;
        Some((Ok::<_, std::io::Error>(chunk.freeze()), (sent + len, row)))
    });
    let started = std::time::Instant::now();
    let outcome = client
        .copy()
        .without_compression()
        .copy_from_stream("COPY big FROM STDIN", rows)
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();

    let growth = status_bytes("VmHWM:").saturating_sub(rss_before);
    eprintln!(
        "uploaded {} rows, {:.0} MB in {seconds:.1} s ({:.0} MB/s); peak RSS growth {:.1} MB",
        outcome.total_rows,
        TOTAL as f64 / 1e6,
        TOTAL as f64 / 1e6 / seconds,
        growth as f64 / 1e6
    );
    assert!(outcome.total_rows > 5_000_000);
    assert_eq!(
        count(&server, &user, "big").await as u64,
        outcome.total_rows
    );
    // Client and server share this process, and other tests run beside it: the bound is
    // loose, but a pipeline that buffered the data would grow by hundreds of MB.
    assert!(growth < 100 * 1000 * 1000, "peak RSS grew {growth} bytes");
    client.sql().send("DROP TABLE big").await.unwrap();
}

/// `fmt::Write` over a `BytesMut`.
fn chunk_writer(chunk: &mut BytesMut) -> impl std::fmt::Write + '_ {
    struct W<'a>(&'a mut BytesMut);
    impl std::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.put_slice(s.as_bytes());
            Ok(())
        }
    }
    W(chunk)
}
