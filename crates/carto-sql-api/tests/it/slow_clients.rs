//! Slow and idle clients cannot hold the server's connections: raw TCP clients over loopback
//! against a server with short, test-sized limits.

use std::time::Duration;

use carto_sql_api::http_server::ConnectionLimits;
use carto_sql_api::testing::TestServer;
use carto_sql_api::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::support::http;

async fn server_with(limits: ConnectionLimits) -> TestServer {
    TestServer::with_config(Config {
        connections: limits,
        ..Config::default()
    })
    .await
}

/// A raw connection to `server` that has sent `bytes`.
async fn connect_and_send(server: &TestServer, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads until the server closes the connection (EOF or reset); what it sent meanwhile.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn a_dribbled_header_is_cut_at_the_header_timeout() {
    let server = server_with(ConnectionLimits {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(60)),
        ..ConnectionLimits::default()
    })
    .await;
    let mut stream = connect_and_send(&server, b"GET /api/v2/version HTTP/1.1\r\n").await;
    let started = Instant::now();
    // One header line a second, never the blank line that ends the header: bytes keep
    // coming, so only the header timeout can end this.
    let mut closed = false;
    for i in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let line = format!("x-dribble-{i}: {i}\r\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(read) = timeout(Duration::from_millis(10), stream.read(&mut buf)).await {
            if matches!(read, Ok(0) | Err(_)) {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "still open after 30 header lines");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = server_with(ConnectionLimits {
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Some(Duration::from_secs(1)),
        ..ConnectionLimits::default()
    })
    .await;
    let request = b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut stream = connect_and_send(&server, request).await;
    // The answer comes, then nothing happens on the connection until the server closes it,
    // long before the 60 s header timeout could.
    let received = timeout(Duration::from_secs(20), read_until_closed(&mut stream))
        .await
        .expect("the idle connection was not closed");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("cartodb_sql_api"), "{text}");
}

#[tokio::test]
async fn a_query_longer_than_the_idle_timeout_gets_its_answer() {
    let server = server_with(ConnectionLimits {
        idle_timeout: Some(Duration::from_secs(1)),
        ..ConnectionLimits::default()
    })
    .await;
    let user = server.create_user().await;
    let response = http()
        .get(format!("{}/sql", server.api_url(&user)))
        .query(&[
            ("q", "SELECT 1 AS slept FROM pg_sleep(3)"),
            ("api_key", &user.api_key),
        ])
        .send()
        .await
        .expect("no answer: the connection was cut as idle");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["rows"][0]["slept"], 1);
}

/// Connections the server has accepted on `port` (from `/proc/net/tcp`: established sockets
/// with that local port and an inode; ones still waiting in the listen backlog have none).
fn accepted_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9 && fields[1].ends_with(&local) && fields[3] == "01" && fields[9] != "0"
        })
        .count()
}

#[tokio::test]
async fn the_connection_cap_holds_and_the_server_recovers() {
    const CAP: usize = 10;
    let server = server_with(ConnectionLimits {
        header_read_timeout: Duration::from_secs(60),
        idle_timeout: Some(Duration::from_secs(60)),
        max_connections: CAP,
    })
    .await;
    let mut half_sent = Vec::new();
    for _ in 0..CAP + 50 {
        let header_begun = b"GET /api/v2/version HTTP/1.1\r\nhost: x\r\n";
        half_sent.push(connect_and_send(&server, header_begun).await);
    }
    // Wait for the server to take all it may, then some more, and count.
    let deadline = Instant::now() + Duration::from_secs(20);
    while accepted_connections(server.addr.port()) < CAP && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted_connections(server.addr.port()), CAP);

    // A whole request waits in the backlog meanwhile, and is served once the others go.
    let waiting = tokio::spawn(
        http()
            .get(format!("http://{}/api/v2/version", server.addr))
            .timeout(Duration::from_secs(60))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    assert!(accepted_connections(server.addr.port()) <= CAP);
    drop(half_sent);
    let response = waiting
        .await
        .unwrap()
        .expect("served after the others closed");
    assert_eq!(response.status(), 200);
}
