//! Many unary gRPC calls in flight on one HTTP/2 connection, for `setpoint bench http
//! --protocol grpc-shared`. gRPC clients share a channel between the calls they have in
//! flight (tritonclient.grpc's client; perf_analyzer's contexts, several to a channel, as
//! `TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT` sets), so a concurrency level's calls are
//! streams of one connection rather than a connection each.
//!
//! One thread drives them, as h2load does: it keeps `calls` streams open, and each time it
//! has taken every whole frame it has read, it sends a new call for each one answered, all
//! in one write. No thread hands a call to another, so the load generator's cost per call
//! stays about that of the one-call-per-connection client (`grpc_unary.rs`), whose
//! connection, frames and answers this shares.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::grpc_message::unframe;
use super::grpc_unary::{Answer, CallError, Conn, Control, Request};

/// One call's end: when it was sent and answered, and what it came to.
#[derive(Debug)]
pub(crate) struct Finished {
    pub started: Instant,
    pub finished: Instant,
    pub outcome: Result<(), CallError>,
}

/// The calls in flight: stream → when it was sent, and its answer so far.
type Flight = HashMap<u32, (Instant, Answer)>;

/// Keeps `calls` unary calls of `req` in flight on one connection to `authority` until
/// `until`, then waits for those still in flight; `done` hears of each call's end. A
/// transport failure fails every call in flight; the driver then pauses 10 ms (so as not to
/// spin against a daemon that went away) and reconnects. A connection the server is closing
/// (GOAWAY) takes no new calls and is replaced once its calls are answered.
pub(crate) fn drive(
    authority: &str,
    req: &Request,
    calls: usize,
    until: Instant,
    mut done: impl FnMut(Finished),
) {
    let mut conn: Option<Conn> = None;
    let mut flight = Flight::with_capacity(calls);
    loop {
        let more = Instant::now() < until;
        if !more && flight.is_empty() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(authority).and_then(|mut c| c.settle().map(|()| c)) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let t = Instant::now();
                    done(Finished {
                        started: t,
                        finished: t,
                        outcome: Err(e),
                    });
                    pause();
                    continue;
                }
            },
        };
        let want = if more { calls } else { 0 };
        match step(c, req, want, &mut flight, &mut done) {
            Ok(()) if c.going_away && flight.is_empty() => conn = None,
            Ok(()) => {}
            Err(e) => {
                let finished = Instant::now();
                for (_, (started, _)) in flight.drain() {
                    done(Finished {
                        started,
                        finished,
                        outcome: Err(e.clone()),
                    });
                }
                conn = None;
                pause();
            }
        }
    }
}

fn pause() {
    std::thread::sleep(Duration::from_millis(10));
}

/// Tops the calls in flight up to `want` (as far as the server's stream limit and flow
/// control let it), sends the new ones in one write, then reads and takes frames until none
/// whole is left.
fn step(
    c: &mut Conn,
    req: &Request,
    want: usize,
    flight: &mut Flight,
    done: &mut impl FnMut(Finished),
) -> Result<(), CallError> {
    let want = if c.going_away {
        0
    } else {
        want.min(c.max_streams)
    };
    while flight.len() < want {
        let Some(id) = c.queue(req)? else { break };
        flight.insert(id, (Instant::now(), Answer::default()));
    }
    c.flush()?;
    // Nothing in flight and nothing to send: nothing to read either. (With calls wanted but
    // none sent, the server's WINDOW_UPDATE is what is waited for.)
    if flight.is_empty() && want == 0 {
        return Ok(());
    }
    loop {
        let head = c.next_frame()?;
        match flight.get_mut(&head.stream) {
            Some((started, answer)) if head.is_answer() => {
                if let Some(outcome) = c.take(answer, head)? {
                    let started = *started;
                    flight.remove(&head.stream);
                    done(Finished {
                        started,
                        finished: Instant::now(),
                        outcome: outcome.and_then(|body| unframe(&body).map(|_| ())),
                    });
                }
            }
            _ => match c.control(head)? {
                Control::Obeyed => {}
                control => flight.retain(|&id, (started, _)| match control.fails(id) {
                    Some(e) => {
                        done(Finished {
                            started: *started,
                            finished: Instant::now(),
                            outcome: Err(e),
                        });
                        false
                    }
                    None => true,
                }),
            },
        }
        if !c.has_frame() {
            return Ok(());
        }
    }
}

#[cfg(test)]
#[path = "grpc_mux_tests.rs"]
mod tests;
