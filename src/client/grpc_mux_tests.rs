//! The multiplexing driver against a server on the `h2` crate that counts the calls it
//! holds at once, and can reset calls, limit streams and go away.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyper::body::Bytes;

use super::*;
use crate::client::grpc_unary::tests::{echo, h2_server, nobody_listening, read_message, request};

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    calls: AtomicUsize,
    /// Calls received and not yet answered, and the most at once.
    holding: AtomicUsize,
    most_held: AtomicUsize,
    resets: AtomicUsize,
}

/// How the server behaves.
#[derive(Clone, Copy, Default)]
struct Rules {
    /// SETTINGS_MAX_CONCURRENT_STREAMS, when set.
    max_streams: Option<u32>,
    /// Every n-th call (over all connections) is reset instead of answered.
    reset_every: Option<usize>,
    /// A connection is told to go away (GOAWAY) at its n-th call.
    goaway_at: Option<usize>,
}

struct Server {
    authority: String,
    seen: Arc<Seen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Echoes every call's message, 20 ms after it arrives (so calls sent together are held
/// together), by `rules`.
fn server(rules: Rules) -> Server {
    let seen = Arc::new(Seen::default());
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let counts = seen.clone();
    let (authority, thread) = h2_server(move |listener| async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => {
                    let (sock, _) = accepted.unwrap();
                    sock.set_nodelay(true).unwrap();
                    counts.connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(connection(sock, counts.clone(), rules));
                }
            }
        }
    });
    Server {
        authority,
        seen,
        stop: Some(stop),
        thread: Some(thread),
    }
}

async fn connection(sock: tokio::net::TcpStream, seen: Arc<Seen>, rules: Rules) {
    let mut builder = h2::server::Builder::new();
    if let Some(m) = rules.max_streams {
        builder.max_concurrent_streams(m);
    }
    let mut conn = builder.handshake(sock).await.unwrap();
    let mut n = 0;
    while let Some(Ok((req, respond))) = conn.accept().await {
        n += 1;
        if rules.goaway_at == Some(n) {
            conn.graceful_shutdown();
        }
        let total = seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let reset = rules.reset_every.is_some_and(|e| total.is_multiple_of(e));
        tokio::spawn(answer(req, respond, seen.clone(), reset));
    }
}

async fn answer(
    req: hyper::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    seen: Arc<Seen>,
    reset: bool,
) {
    let held = seen.holding.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_held.fetch_max(held, Ordering::SeqCst);
    let message = read_message(req).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    seen.holding.fetch_sub(1, Ordering::SeqCst);
    if reset {
        seen.resets.fetch_add(1, Ordering::SeqCst);
        respond.send_reset(h2::Reason::CANCEL);
        return;
    }
    echo(&mut respond, message);
}

/// Drives `calls` calls for `for_ms`: the calls' ends, in the order they were heard of.
fn run(server: &Server, calls: usize, for_ms: u64) -> Vec<Finished> {
    let req = request(&server.authority, "/t.S/Echo", "hello");
    let until = Instant::now() + Duration::from_millis(for_ms);
    let mut ends = Vec::new();
    drive(&server.authority, &req, calls, until, |f| ends.push(f));
    ends
}

#[test]
fn the_calls_share_one_connection_with_as_many_in_flight_as_asked() {
    let s = server(Rules::default());
    let ends = run(&s, 8, 300);
    // Every call the server took was answered and heard of, and nothing failed.
    assert_eq!(ends.len(), s.seen.calls.load(Ordering::SeqCst));
    assert!(ends.len() >= 16, "{} calls", ends.len());
    assert!(ends.iter().all(|f| f.outcome.is_ok()), "{ends:?}");
    assert!(ends.iter().all(|f| f.finished >= f.started));
    assert_eq!(s.seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(s.seen.most_held.load(Ordering::SeqCst), 8);
    // Each call took the server's 20 ms at least: a call is timed from its own send.
    let shortest = ends.iter().map(|f| f.finished - f.started).min().unwrap();
    assert!(shortest >= Duration::from_millis(20), "{shortest:?}");
}

#[test]
fn a_reset_stream_fails_its_call_alone() {
    let s = server(Rules {
        reset_every: Some(4),
        ..Rules::default()
    });
    let ends = run(&s, 6, 300);
    let failed: Vec<_> = ends
        .iter()
        .filter_map(|f| f.outcome.as_ref().err())
        .collect();
    assert_eq!(failed.len(), s.seen.resets.load(Ordering::SeqCst));
    assert!(!failed.is_empty());
    for e in failed {
        match e {
            CallError::Transport(m) => {
                assert!(m.contains("reset the stream (error code 8)"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ends.len(), s.seen.calls.load(Ordering::SeqCst));
    assert_eq!(s.seen.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn the_servers_stream_limit_bounds_the_calls_in_flight() {
    let s = server(Rules {
        max_streams: Some(3),
        ..Rules::default()
    });
    let ends = run(&s, 8, 200);
    // No call was refused for going over the limit: the limit was read before the first.
    assert!(ends.iter().all(|f| f.outcome.is_ok()), "{ends:?}");
    assert_eq!(s.seen.most_held.load(Ordering::SeqCst), 3);
}

#[test]
fn a_connection_going_away_answers_its_calls_and_the_next_ones_go_on_a_new_one() {
    let s = server(Rules {
        goaway_at: Some(10),
        ..Rules::default()
    });
    let ends = run(&s, 4, 300);
    assert!(ends.iter().all(|f| f.outcome.is_ok()), "{ends:?}");
    assert_eq!(ends.len(), s.seen.calls.load(Ordering::SeqCst));
    // About 12 calls a connection (4 at a time, 20 ms each, told to go at the tenth).
    assert!(s.seen.connections.load(Ordering::SeqCst) >= 2);
}

#[test]
fn nobody_listening_fails_each_try_as_unreachable_until_the_end() {
    let authority = nobody_listening();
    let req = request(&authority, "/t.S/Echo", "");
    let mut ends = Vec::new();
    drive(
        &authority,
        &req,
        4,
        Instant::now() + Duration::from_millis(50),
        |f| ends.push(f),
    );
    // One failure per try, each followed by a 10 ms pause: a few, not a spin.
    assert!((1..=6).contains(&ends.len()), "{} tries", ends.len());
    assert!(
        ends.iter()
            .all(|f| f.outcome == Err(CallError::Unreachable))
    );
}
