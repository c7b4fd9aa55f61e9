//! The HTTP/1.1 side of `setpoint bench http`'s load: one keep-alive connection that sends
//! the same request, rendered once, as one write, and reads each answer by its
//! `Content-Length`.
//!
//! The load generator's two clients are meant to cost the same so that a comparison of
//! protocols measures the daemon. ureq, the general client the rest of the CLI uses, spent
//! about twice the CPU per request of the gRPC client at one connection: it resolved the
//! host on a new thread for every request and wrote the head and the body in two writes
//! (seen with `strace`). Both clients now send a request as one write and read its answer
//! whole; neither spawns anything per request.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A request rendered once: `POST path` with its headers and body.
pub(crate) struct Rendered {
    bytes: Vec<u8>,
}

impl Rendered {
    /// `POST` to `url` (`http://HOST:PORT/path`) with `headers` and `body`.
    pub(crate) fn post(
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<(String, Self), String> {
        let (authority, path) = split_url(url)?;
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        Ok((authority.to_string(), Rendered { bytes }))
    }
}

/// `http://HOST:PORT/path` as its authority and path.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}': the load generator speaks plain http:// only"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection could be made.
    Unreachable,
    /// The connection broke or the answer could not be read; why.
    Transport(String),
}

impl Failure {
    /// Its name in the bench's report.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Transport(_) => "transport",
        }
    }
}

/// One keep-alive connection, opened at the first request and again after a failure or a
/// `connection: close`.
pub(crate) struct KeepAlive {
    authority: String,
    stream: Option<TcpStream>,
    /// Bytes read past the last answer's end (none from a well-behaved server).
    buf: Vec<u8>,
    /// What each read fills, zeroed once (a buffer zeroed for every read cost about as much
    /// as the read's copy).
    scratch: Box<[u8]>,
}

impl KeepAlive {
    /// A client of `authority` (`HOST:PORT`); it connects at its first request.
    pub(crate) fn new(authority: String) -> Self {
        KeepAlive {
            authority,
            stream: None,
            buf: Vec::with_capacity(4096),
            scratch: vec![0; 8192].into_boxed_slice(),
        }
    }

    /// Sends `req` and reads its answer; the answer's status.
    pub(crate) fn send(&mut self, req: &Rendered) -> Result<u16, Failure> {
        let stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect()?,
        };
        let result = exchange(&stream, &req.bytes, &mut self.buf, &mut self.scratch);
        if let Ok((_, keep)) = &result
            && *keep
        {
            self.stream = Some(stream);
        }
        result.map(|(status, _)| status)
    }

    fn connect(&mut self) -> Result<TcpStream, Failure> {
        let stream = dial(&self.authority)?;
        self.buf.clear();
        Ok(stream)
    }
}

/// A connection to `authority` (`HOST:PORT`) for the bench's clients: at most 5 s to
/// connect, no Nagle delay, reads given up after 60 s.
pub(crate) fn dial(authority: &str) -> Result<TcpStream, Failure> {
    let addr = authority
        .to_socket_addrs()
        .map_err(|_| Failure::Unreachable)?
        .next()
        .ok_or(Failure::Unreachable)?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|_| Failure::Unreachable)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| Failure::Transport(e.to_string()))?;
    Ok(stream)
}

/// Writes `request` and reads one answer: its status and whether the connection stays
/// open.
fn exchange(
    mut stream: &TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> Result<(u16, bool), Failure> {
    let broke = |e: std::io::Error| Failure::Transport(e.to_string());
    stream.write_all(request).map_err(broke)?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf, scratch)?;
    };
    let head = Head::parse(&buf[..head_end])?;
    while buf.len() < head_end + head.content_length {
        read_more(stream, buf, scratch)?;
    }
    Ok((head.status, head.keep_alive))
}

fn read_more(mut stream: &TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> Result<(), Failure> {
    match stream.read(chunk) {
        Ok(0) => Err(Failure::Transport(
            "the server closed the connection".into(),
        )),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(Failure::Transport(e.to_string())),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the load generator needs of an answer's head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: usize,
    keep_alive: bool,
}

impl Head {
    fn parse(head: &[u8]) -> Result<Head, Failure> {
        let bad = |why: &str| Failure::Transport(format!("answer head: {why}"));
        let text = std::str::from_utf8(head).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.strip_prefix("HTTP/1.1 "))
            .and_then(|l| l.get(..3))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no HTTP/1.1 status line"))?;
        let (mut content_length, mut keep_alive) = (None, true);
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse().map_err(|_| bad("bad content-length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked answers are not read by the load generator"));
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        Ok(Head {
            status,
            content_length: content_length.ok_or_else(|| bad("no content-length"))?,
            keep_alive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_rendered_once_with_its_length() {
        let (authority, req) = Rendered::post(
            "http://127.0.0.1:8000/v2/models/mlp/infer",
            &[("content-type", "application/json".into())],
            b"{}",
        )
        .unwrap();
        assert_eq!(authority, "127.0.0.1:8000");
        assert_eq!(
            String::from_utf8(req.bytes).unwrap(),
            "POST /v2/models/mlp/infer HTTP/1.1\r\nhost: 127.0.0.1:8000\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let err = Rendered::post("https://x/", &[], b"").err().unwrap();
        assert!(err.contains("plain http://"), "{err}");
    }

    #[test]
    fn an_answer_head_gives_status_length_and_whether_it_stays_open() {
        let head = Head::parse(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(
            head,
            Ok(Head {
                status: 429,
                content_length: 12,
                keep_alive: true
            })
        );
        let closing =
            Head::parse(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nConnection: close\r\n\r\n");
        assert!(!closing.unwrap().keep_alive);
        for (raw, why) in [
            (&b"HTTP/1.1 200 OK\r\n\r\n"[..], "no content-length"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "chunked",
            ),
            (b"SSH-2.0\r\n\r\n", "no HTTP/1.1 status line"),
        ] {
            match Head::parse(raw) {
                Err(Failure::Transport(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_keep_alive_exchange_reads_each_answer_whole_and_reconnects_after_a_close() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            // First connection: two answers, the second split across writes and closing.
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 256];
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .unwrap();
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-len")
                .unwrap();
            s.write_all(b"gth: 3\r\nconnection: close\r\n\r\nbye")
                .unwrap();
            // Second connection: one answer.
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut req).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        let (_, req) = Rendered::post(&format!("http://{authority}/x"), &[], b"q").unwrap();
        let mut client = KeepAlive::new(authority);
        assert_eq!(client.send(&req), Ok(200));
        assert_eq!(client.send(&req), Ok(503));
        assert_eq!(client.send(&req), Ok(200));
        server.join().unwrap();
    }
}
