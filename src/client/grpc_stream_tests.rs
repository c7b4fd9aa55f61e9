//! The stream client against a server on the `h2` crate that reads each stream's messages
//! as they come and answers each with a `ModelStreamInferResponse`, by rules that end
//! streams, answer errors in the stream, and meter the client with a small window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Bytes;
use prost::Message;

use super::*;
use crate::api::grpc::pb;
use crate::client::grpc_message::{frame, take_message};
use crate::client::grpc_unary::tests::{h2_server, nobody_listening};

/// How the server behaves.
#[derive(Clone, Copy, Default)]
struct Rules {
    /// SETTINGS_INITIAL_WINDOW_SIZE, when set; a message's capacity is given back 2 ms after
    /// its answer.
    window: Option<u32>,
    /// Every n-th message of a stream is answered with `error_message` set.
    error_every: Option<usize>,
    /// A stream is ended (trailers with RESOURCE_EXHAUSTED) instead of answering its n-th
    /// message.
    end_at: Option<usize>,
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    streams: AtomicUsize,
    messages: AtomicUsize,
}

/// Serves `connections` connections in turn by `rules`.
fn server(connections: usize, rules: Rules) -> (String, Arc<Seen>, std::thread::JoinHandle<()>) {
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    let (authority, thread) = h2_server(move |listener| async move {
        for _ in 0..connections {
            let (sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let mut builder = h2::server::Builder::new();
            if let Some(w) = rules.window {
                builder.initial_window_size(w);
            }
            let mut conn = builder.handshake(sock).await.unwrap();
            while let Some(Ok((req, respond))) = conn.accept().await {
                counts.streams.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_stream(req, respond, rules, counts.clone()));
            }
        }
    });
    (authority, seen, thread)
}

/// Answers one stream's messages, each as it is whole.
async fn serve_stream(
    req: hyper::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    rules: Rules,
    seen: Arc<Seen>,
) {
    let head = hyper::Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    let mut body = req.into_body();
    let mut inbox = Vec::new();
    let mut n = 0;
    while let Some(Ok(chunk)) = body.data().await {
        inbox.extend_from_slice(&chunk);
        while let Some(message) = take_message(&mut inbox).unwrap() {
            n += 1;
            seen.messages.fetch_add(1, Ordering::SeqCst);
            if rules.end_at == Some(n) {
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", "8".parse().unwrap());
                let _ = send.send_trailers(trailers);
                return;
            }
            let req = pb::ModelInferRequest::decode(&message[..]).unwrap();
            let failed = rules.error_every.is_some_and(|e| n % e == 0);
            let reply = pb::ModelStreamInferResponse {
                error_message: if failed {
                    format!("no {}", req.id)
                } else {
                    String::new()
                },
                infer_response: Some(pb::ModelInferResponse {
                    id: req.id,
                    ..Default::default()
                }),
            };
            let _ = send.send_data(frame(&reply), false);
            // Capacity goes back a while after the answer, so that the client's next message
            // waits for the WINDOW_UPDATE where the window is small.
            if rules.window.is_some() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let _ = body.flow_control().release_capacity(message.len() + 5);
        }
    }
}

/// A stream request whose message carries `id` and `pad` bytes of input.
fn request(authority: &str, id: &str, pad: usize) -> Request {
    let msg = pb::ModelInferRequest {
        model_name: "mlp".into(),
        id: id.into(),
        raw_input_contents: vec![vec![7; pad]],
        ..Default::default()
    };
    let path = "/inference.GRPCInferenceService/ModelStreamInfer";
    Request::new(authority, path, frame(&msg)).unwrap()
}

/// The id an answer names.
fn answered_id(answer: &[u8]) -> String {
    let reply = pb::ModelStreamInferResponse::decode(answer).unwrap();
    reply.infer_response.unwrap().id
}

#[test]
fn calls_go_as_messages_on_one_stream_and_errors_in_it_do_not_end_it() {
    let rules = Rules {
        error_every: Some(3),
        ..Rules::default()
    };
    let (authority, seen, _server) = server(1, rules);
    let mut client = StreamClient::new(authority.clone());
    for i in 1..=30 {
        let id = format!("r{i}");
        let answer = client.call(&request(&authority, &id, 16));
        if i % 3 == 0 {
            assert_eq!(answer, Err(CallError::InStream(format!("no {id}"))));
        } else {
            assert_eq!(answered_id(&answer.unwrap()), id);
        }
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    assert_eq!(seen.streams.load(Ordering::SeqCst), 1);
    assert_eq!(seen.messages.load(Ordering::SeqCst), 30);
}

#[test]
fn a_stream_sends_no_more_than_its_window_and_goes_on_as_the_server_reads() {
    // 1,000 bytes of window against 200 calls of about 520 bytes: the client must wait for
    // each WINDOW_UPDATE; one byte over and the server resets the stream.
    let rules = Rules {
        window: Some(1_000),
        ..Rules::default()
    };
    let (authority, seen, _server) = server(1, rules);
    let mut client = StreamClient::new(authority.clone());
    for i in 0..200 {
        let id = format!("w{i}");
        let reply = client.call(&request(&authority, &id, 500)).unwrap();
        assert_eq!(answered_id(&reply), id);
    }
    assert_eq!(seen.streams.load(Ordering::SeqCst), 1);
}

#[test]
fn a_message_over_the_stream_window_is_refused_by_name() {
    let rules = Rules {
        window: Some(1_000),
        ..Rules::default()
    };
    let (authority, _seen, _server) = server(1, rules);
    let mut client = StreamClient::new(authority.clone());
    // The first call learns the server's window; the second is over it.
    client.call(&request(&authority, "small", 10)).unwrap();
    match client.call(&request(&authority, "big", 2_000)) {
        Err(CallError::Transport(m)) => {
            assert!(m.contains("over the server's stream window of 1000"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_ended_stream_fails_its_call_with_the_status_and_the_next_call_opens_another() {
    let rules = Rules {
        end_at: Some(3),
        ..Rules::default()
    };
    let (authority, seen, _server) = server(1, rules);
    let mut client = StreamClient::new(authority.clone());
    for round in 0..2 {
        for i in 1..=2 {
            let id = format!("{round}-{i}");
            assert_eq!(
                answered_id(&client.call(&request(&authority, &id, 8)).unwrap()),
                id
            );
        }
        assert_eq!(
            client.call(&request(&authority, "ended", 8)),
            Err(CallError::Status(tonic::Code::ResourceExhausted))
        );
    }
    // A status ends the stream, not the connection.
    assert_eq!(seen.streams.load(Ordering::SeqCst), 2);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn a_closed_connection_fails_the_call_and_nobody_listening_is_unreachable() {
    let (authority, _seen, server) = server(1, Rules::default());
    let mut client = StreamClient::new(authority.clone());
    client.call(&request(&authority, "a", 8)).unwrap();
    // The server's one connection is served; stopping it closes the socket.
    drop(client);
    let mut client = StreamClient::new(authority.clone());
    match client.call(&request(&authority, "b", 8)) {
        Err(CallError::Transport(_) | CallError::Unreachable) => {}
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(50));
    drop(server);
    let gone = nobody_listening();
    let mut client = StreamClient::new(gone.clone());
    assert_eq!(
        client.call(&request(&gone, "c", 8)),
        Err(CallError::Unreachable)
    );
}
