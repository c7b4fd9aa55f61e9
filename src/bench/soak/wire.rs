//! A minimal HTTP/1.1 client for the soak's load: one request at a time per keep-alive
//! connection, the request pre-encoded once, the answer read only as far as its status and
//! length. It costs the load generator a few system calls per request, which matters on a
//! machine where the generator and the daemon share the cores.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request encoded once: head and body.
pub(crate) fn encode_request(
    method: &str,
    host: &SocketAddr,
    path: &str,
    json: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    if let Some(body) = json {
        out.push_str("content-type: application/json\r\n");
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(body) = json {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// One keep-alive connection, opened on first use and again after it breaks or the daemon
/// closes it.
pub(crate) struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// The head of an answer: status, body length (`None`: chunked), whether the daemon closes.
struct Head {
    status: u16,
    len: Option<usize>,
    close: bool,
    head_end: usize,
}

impl Conn {
    /// A connection to `addr`, not yet open.
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends `request` and reads the whole answer; its status. A kept-alive connection the
    /// daemon closed before any byte of the answer (its idle timeout) is opened again and the
    /// request sent once more.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        let reused = self.stream.is_some();
        match self.try_exchange(request).await {
            Ok(s) => Ok(s),
            Err(e) if reused && self.buf.is_empty() => {
                let _ = e;
                self.try_exchange(request).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        self.buf.clear();
        let result = self.round_trip(request).await;
        match &result {
            Ok((_, true)) | Err(_) => self.stream = None,
            Ok((_, false)) => {}
        }
        result.map(|(status, _)| status)
    }

    async fn round_trip(&mut self, request: &[u8]) -> io::Result<(u16, bool)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        stream.write_all(request).await?;
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            read_more(stream, &mut self.buf).await?;
        };
        match head.len {
            Some(n) => {
                while self.buf.len() < head.head_end + n {
                    read_more(stream, &mut self.buf).await?;
                }
            }
            None => read_chunked(stream, &mut self.buf, head.head_end).await?,
        }
        Ok((head.status, head.close))
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection before the end of its answer",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads a chunked body to its last chunk (trailers are not expected and not read).
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, mut at: usize) -> io::Result<()> {
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[at..], b"\r\n") {
                break at + i;
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[at..line_end]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        let next = line_end + 2 + size + 2;
        while buf.len() < next {
            read_more(stream, buf).await?;
        }
        if size == 0 {
            return Ok(());
        }
        at = next;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The answer's head, once all of it has been read.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| bad("answer head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut len = Some(0);
    let mut close = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse().map_err(|_| bad("bad content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            len = None;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    Ok(Some(Head {
        status,
        len,
        close,
        head_end: end + 4,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_once_whole() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-len")
                .unwrap()
                .is_none()
        );
        let h = parse_head(
            b"HTTP/1.1 429 Too Many\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.status, h.len, h.close), (429, Some(12), true));
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.len, h.close), (200, None, false));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn a_request_is_answered_over_a_kept_alive_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            for answer in [
                &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
                &b"HTTP/1.1 504 Gateway Timeout\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"[..],
            ] {
                let _ = s.read(&mut b).await.unwrap();
                s.write_all(answer).await.unwrap();
            }
        });
        let req = encode_request("POST", &addr, "/x", Some(b"{}"));
        assert!(String::from_utf8_lossy(&req).contains("content-length: 2\r\n\r\n{}"));
        let mut c = Conn::new(addr);
        assert_eq!(c.exchange(&req).await.unwrap(), 200);
        assert_eq!(c.exchange(&req).await.unwrap(), 504);
    }
}
