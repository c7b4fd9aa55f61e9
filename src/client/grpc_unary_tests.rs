//! The bench's HTTP/2 client against a server built on the `h2` crate (the one under the
//! daemon's tonic), which Huffman-codes and indexes its headers, announces its own settings
//! and meters this client's sends by flow control.

use super::*;
use crate::api::grpc::pb;
use crate::client::grpc_message::frame;
use hyper::body::Bytes;
use prost::Message;
use std::time::Duration;

/// Serves `connections` connections in turn: `/t.S/Echo` answers the request's message with
/// status OK, `/t.S/Drain` too after telling the client to go away (GOAWAY); `/t.S/Full` answers trailers-only with RESOURCE_EXHAUSTED; `/t.S/Teapot`
/// answers HTTP 418. Each connection is closed after `calls_per_connection` calls.
fn server(
    connections: usize,
    calls_per_connection: usize,
) -> (String, std::thread::JoinHandle<()>) {
    h2_server(move |listener| async move {
        for _ in 0..connections {
            let (sock, _) = listener.accept().await.unwrap();
            // As the daemon does; with Nagle's algorithm each answer's second write
            // would wait for the client's delayed acknowledgement.
            sock.set_nodelay(true).unwrap();
            let mut conn = h2::server::handshake(sock).await.unwrap();
            let mut calls = 0;
            while let Some(req) = conn.accept().await {
                let (req, respond) = req.unwrap();
                if req.uri().path() == "/t.S/Drain" {
                    // GOAWAY, then the call in flight is answered (as Echo).
                    conn.graceful_shutdown();
                }
                tokio::spawn(answer(req, respond));
                calls += 1;
                if calls == calls_per_connection {
                    break;
                }
            }
            // Let the last answer leave before the connection is dropped.
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.accept()).await;
        }
    })
}

/// Runs `serve` on a current-thread runtime on a thread of its own, given a listener on a
/// free loopback port: the port's authority and the thread.
pub(in crate::client) fn h2_server<F, Fut>(serve: F) -> (String, std::thread::JoinHandle<()>)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            serve(tokio::net::TcpListener::from_std(listener).unwrap()).await;
        });
    });
    (authority, handle)
}

/// A request's whole body, its flow-control capacity given back as it is read.
pub(in crate::client) async fn read_message(req: hyper::Request<h2::RecvStream>) -> Vec<u8> {
    let mut body = req.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
    }
    message
}

/// Answers status OK with `message`: headers, one DATA frame, trailers. A client already
/// gone is not the server's failure.
pub(in crate::client) fn echo(respond: &mut h2::server::SendResponse<Bytes>, message: Vec<u8>) {
    let Ok(mut send) = respond.send_response(grpc_head(200).body(()).unwrap(), false) else {
        return;
    };
    let _ = send.send_data(Bytes::from(message), false);
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let _ = send.send_trailers(trailers);
}

fn grpc_head(status: u16) -> hyper::http::response::Builder {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/grpc")
}

async fn answer(req: hyper::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>) {
    let path = req.uri().path().to_string();
    let message = read_message(req).await;
    match path.as_str() {
        "/t.S/Echo" | "/t.S/Drain" => echo(&mut respond, message),
        "/t.S/Full" => {
            let only = grpc_head(200).header("grpc-status", "8").body(()).unwrap();
            respond.send_response(only, true).unwrap();
        }
        _ => {
            respond
                .send_response(grpc_head(418).body(()).unwrap(), true)
                .unwrap();
        }
    }
}

/// The text a [`request`]'s message carried, from an echoed answer.
pub(in crate::client) fn name(message: &[u8]) -> String {
    pb::ServerMetadataResponse::decode(message).unwrap().name
}

pub(in crate::client) fn request(authority: &str, path: &str, text: &str) -> Request {
    let msg = pb::ServerMetadataResponse {
        name: text.into(),
        ..Default::default()
    };
    Request::new(authority, path, frame(&msg)).unwrap()
}

#[test]
fn calls_answer_their_message_or_their_status_and_a_broken_connection_is_replaced() {
    let (authority, server) = server(3, 3);
    let mut client = UnaryClient::new(authority.clone());
    let echo = client
        .call(&request(&authority, "/t.S/Echo", "first"))
        .unwrap();
    assert_eq!(name(&echo), "first");
    // A status keeps the connection: the next call is the same connection's third.
    assert_eq!(
        client.call(&request(&authority, "/t.S/Full", "")),
        Err(CallError::Status(tonic::Code::ResourceExhausted))
    );
    match client.call(&request(&authority, "/t.S/Teapot", "")) {
        Err(CallError::Transport(m)) => assert!(m.contains("HTTP 418"), "{m}"),
        other => panic!("{other:?}"),
    }
    // A transport failure drops the connection: this call is on the server's second, which
    // then goes away with the call in flight answered.
    let echo = client
        .call(&request(&authority, "/t.S/Drain", "again"))
        .unwrap();
    assert_eq!(name(&echo), "again");
    // A third connection for the next call.
    let echo = client
        .call(&request(&authority, "/t.S/Echo", "third"))
        .unwrap();
    assert_eq!(name(&echo), "third");
    drop(client);
    server.join().unwrap();
}

#[test]
fn thousands_of_calls_pass_the_servers_flow_control_and_a_closed_connection_is_replaced() {
    // 3,000 requests of about 1 KB each are 3 MB, 46 times the server's initial 64 KB window:
    // the client must wait for and obey its WINDOW_UPDATEs. The server closes the first
    // connection after 1,500 calls.
    let (authority, server) = server(2, 1500);
    let mut client = UnaryClient::new(authority.clone());
    let text = "x".repeat(1000);
    let req = request(&authority, "/t.S/Echo", &text);
    let (mut ok, mut broken) = (0, 0);
    for _ in 0..3001 {
        match client.call(&req) {
            Ok(msg) => {
                assert_eq!(name(&msg), text);
                ok += 1;
            }
            Err(CallError::Transport(_)) => broken += 1,
            Err(other) => panic!("{other:?}"),
        }
    }
    // The call that meets the closed connection fails (and the one before it, should the
    // server drop the connection before its answer left).
    assert!(
        ok >= 2999 && (1..=2).contains(&broken),
        "{ok} ok, {broken} failed"
    );
    drop(client);
    server.join().unwrap();
}

/// An address nobody listens on: a port the system gave and took back.
pub(in crate::client) fn nobody_listening() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn nobody_listening_is_unreachable() {
    let authority = nobody_listening();
    let mut client = UnaryClient::new(authority.clone());
    let err = client
        .call(&request(&authority, "/t.S/Echo", ""))
        .unwrap_err();
    assert_eq!(err, CallError::Unreachable);
    assert_eq!(err.kind(), "unreachable");
}

#[test]
fn a_request_over_one_frame_is_refused_by_name() {
    let big = Bytes::from(vec![0u8; MAX_FRAME + 1]);
    let err = Request::new("h:1", "/p", big).err().unwrap();
    assert!(err.contains("one-frame limit of 16384"), "{err}");
    let long = format!("/{}", "p".repeat(MAX_FRAME));
    let err = Request::new("h:1", &long, Bytes::new()).err().unwrap();
    assert!(err.contains("headers of 16"), "{err}");
}

#[test]
fn the_status_comes_from_the_block_that_ends_the_stream() {
    let says = |status: Option<Result<u16, ()>>, grpc_status: Option<i32>| BlockSays {
        status,
        grpc_status,
    };
    assert_eq!(
        check_block(says(Some(Ok(200)), None), true, false),
        Ok(None)
    );
    assert_eq!(
        check_block(says(None, Some(0)), false, true),
        Ok(Some(tonic::Code::Ok))
    );
    assert_eq!(
        check_block(says(Some(Ok(200)), Some(5)), true, true),
        Ok(Some(tonic::Code::NotFound))
    );
    for (said, first, why) in [
        (says(None, Some(0)), true, "without :status"),
        (says(Some(Err(())), None), true, "not a number"),
        (says(Some(Ok(503)), None), true, "HTTP 503"),
        (says(None, None), false, "without a grpc-status"),
    ] {
        match check_block(said, first, true) {
            Err(CallError::Transport(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        CallError::Status(tonic::Code::ResourceExhausted).kind(),
        "ResourceExhausted"
    );
}

#[test]
fn a_connection_indexes_one_requests_fields_and_only_where_the_servers_table_allows() {
    let a = request("127.0.0.1:1", "/t.S/Echo", "a");
    let b = request("127.0.0.1:1", "/t.S/Other", "b");
    // A fresh connection: the first call adds the fields, the next names them by index.
    let (first, held) = a.block(HPACK_TABLE, None);
    assert_eq!(first, a.first.as_slice());
    assert_eq!(held, Some(a.id));
    let (next, held) = a.block(HPACK_TABLE, held);
    assert_eq!(next, a.indexed.as_slice());
    assert!(next.len() < 10, "six indexed fields: {next:?}");
    // Another request on that connection: literals, and the table still holds a's fields.
    assert_eq!(b.block(HPACK_TABLE, held), (b.literal.as_slice(), held));
    // A server table under HPACK's initial size: never indexed.
    assert_eq!(a.block(1024, None), (a.literal.as_slice(), None));
}
