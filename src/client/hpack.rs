//! HPACK (RFC 7541), as much as the bench's HTTP/2 client needs: a decoder of header blocks
//! (static and dynamic tables, integers, Huffman-coded strings) and an encoder of literal
//! fields that never touches the server's table, so a request's block is rendered once.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The static table (RFC 7541 Appendix A), entries 1 to 61.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Bit lengths of the Huffman code of bytes 0 to 255 (RFC 7541 Appendix B); EOS (256) is 30
/// bits. The code is canonical: within a length, codes rise with the symbol, so the lengths
/// alone define it.
const HUFFMAN_BITS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
];

/// Why a header block could not be decoded.
pub(crate) type Error = String;

/// A header field the dynamic table holds.
type Field = (Vec<u8>, Vec<u8>);

/// The canonical Huffman code arranged for decoding: per bit length, the first code, how
/// many codes have it, and where its symbols start in `symbols` (sorted by length, then by
/// value).
struct Canonical {
    first: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    symbols: Vec<u16>,
}

fn canonical() -> &'static Canonical {
    static CODE: OnceLock<Canonical> = OnceLock::new();
    CODE.get_or_init(|| {
        let bits = |s: u16| {
            if s == 256 {
                30
            } else {
                HUFFMAN_BITS[s as usize]
            }
        };
        let mut symbols: Vec<u16> = (0..=256).collect();
        symbols.sort_by_key(|&s| (bits(s), s));
        let mut c = Canonical {
            first: [0; 31],
            count: [0; 31],
            start: [0; 31],
            symbols,
        };
        for &s in &c.symbols {
            c.count[bits(s) as usize] += 1;
        }
        let (mut code, mut at) = (0u32, 0usize);
        for len in 1..31 {
            code <<= 1;
            c.first[len] = code;
            c.start[len] = at;
            code += c.count[len];
            at += c.count[len] as usize;
        }
        c
    })
}

/// Decodes a Huffman-coded string: the padding must be under 8 bits of EOS's leading ones.
fn huffman_decode(data: &[u8]) -> Result<Vec<u8>, Error> {
    let c = canonical();
    let mut out = Vec::with_capacity(data.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for byte in data {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(c.first[len]);
            if offset < c.count[len] {
                let sym = c.symbols[c.start[len] + offset as usize];
                if sym == 256 {
                    return Err("a Huffman string holds EOS".into());
                }
                out.push(sym as u8);
                (code, len) = (0, 0);
            } else if len == 30 {
                return Err("a Huffman code longer than 30 bits".into());
            }
        }
    }
    if len > 7 || code != (1 << len) - 1 {
        return Err("a Huffman string's padding is not EOS's leading bits".into());
    }
    Ok(out)
}

/// An HPACK integer with an `n`-bit prefix at `data[*at]`, moving `at` past it.
fn integer(data: &[u8], at: &mut usize, n: u32) -> Result<usize, Error> {
    let short = "a header block ends inside an integer";
    let mask = (1usize << n) - 1;
    let v = usize::from(*data.get(*at).ok_or(short)?) & mask;
    *at += 1;
    if v < mask {
        return Ok(v);
    }
    let (mut wide, mut shift) = (v as u64, 0);
    loop {
        let b = *data.get(*at).ok_or(short)?;
        *at += 1;
        wide += u64::from(b & 0x7f) << shift;
        if shift > 28 || wide > u64::from(u32::MAX) {
            return Err("an HPACK integer over 32 bits".into());
        }
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(wide as usize);
        }
    }
}

/// A string literal at `data[*at]`, Huffman-decoded where marked.
fn string(data: &[u8], at: &mut usize) -> Result<Vec<u8>, Error> {
    let huffman = data.get(*at).is_some_and(|b| b & 0x80 != 0);
    let len = integer(data, at, 7)?;
    let raw = data
        .get(*at..*at + len)
        .ok_or("a header block ends inside a string")?;
    *at += len;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// The decoder of one connection's header blocks, with its dynamic table.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Newest first, as HPACK numbers them (62 is the newest).
    table: VecDeque<Field>,
    size: usize,
    max: usize,
    /// The most the table may hold: the SETTINGS_HEADER_TABLE_SIZE this side announced.
    limit: usize,
}

impl Decoder {
    /// A decoder whose table may hold `limit` bytes (4,096 unless announced otherwise).
    pub(crate) fn new(limit: usize) -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
        }
    }

    /// Decodes a whole header block, handing `each` its fields in order. A field the tables
    /// hold is handed over without a copy.
    pub(crate) fn decode_each(
        &mut self,
        block: &[u8],
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut at = 0;
        while at < block.len() {
            let b = block[at];
            if b & 0x80 != 0 {
                let i = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(i)?;
                each(name, value);
            } else if b & 0xe0 == 0x20 {
                let max = integer(block, &mut at, 5)?;
                if max > self.limit {
                    return Err(format!(
                        "a table size update to {max} bytes, over the {} announced",
                        self.limit
                    ));
                }
                self.max = max;
                self.evict(0);
            } else {
                let (prefix, index) = if b & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let name_at = integer(block, &mut at, prefix)?;
                let name = match name_at {
                    0 => string(block, &mut at)?,
                    i => self.entry(i)?.0.to_vec(),
                };
                let value = string(block, &mut at)?;
                each(&name, &value);
                if index {
                    self.insert((name, value));
                }
            }
        }
        Ok(())
    }

    fn entry(&self, i: usize) -> Result<(&[u8], &[u8]), Error> {
        let found = match i {
            1..=61 => {
                let (n, v) = STATIC[i - 1];
                Some((n.as_bytes(), v.as_bytes()))
            }
            _ => i
                .checked_sub(62)
                .and_then(|d| self.table.get(d))
                .map(|(n, v)| (&n[..], &v[..])),
        };
        found.ok_or_else(|| format!("header table index {i} is not in the table"))
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + 32;
        self.evict(size);
        if size <= self.max {
            self.size += size;
            self.table.push_front(field);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit (all of them when it cannot).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// Appends an HPACK integer of `v` with an `n`-bit prefix whose high bits are `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, n: u32, v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = v - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a field as a literal never added to the table: the name by its static index
/// where it has one (`name_index`, else 0 and the name spelled out), the value raw.
pub(crate) fn put_literal(out: &mut Vec<u8>, name_index: usize, name: &str, value: &str) {
    put_field(out, 0x00, 4, name_index, name, value);
}

/// Appends a field as a literal the decoder adds to its dynamic table (RFC 7541 §6.2.1), the
/// name as for [`put_literal`]: it becomes the table's index 62, and the entries before it
/// move up by one.
pub(crate) fn put_indexing_literal(out: &mut Vec<u8>, name_index: usize, name: &str, value: &str) {
    put_field(out, 0x40, 6, name_index, name, value);
}

/// A literal field: the representation's `flags` with the name index in an `n`-bit prefix,
/// the name spelled out when the index is 0, then the value, both raw.
fn put_field(out: &mut Vec<u8>, flags: u8, n: u32, name_index: usize, name: &str, value: &str) {
    put_integer(out, flags, n, name_index);
    if name_index == 0 {
        put_integer(out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
    }
    put_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Appends a field the static table holds whole (`:method: POST` is 3).
pub(crate) fn put_indexed(out: &mut Vec<u8>, index: usize) {
    put_integer(out, 0x80, 7, index);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    impl Decoder {
        fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, Error> {
            let mut fields = Vec::new();
            self.decode_each(block, |n, v| fields.push((n.to_vec(), v.to_vec())))?;
            Ok(fields)
        }
    }

    fn text(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn huffman_strings_of_rfc_7541_decode() {
        for (code, want) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("1d75d0620d263d4c4d6564", "application/grpc"),
            ("9acac8b21234da8f", "grpc-status"),
            ("07", "0"),
        ] {
            assert_eq!(huffman_decode(&hex(code)).unwrap(), want.as_bytes());
        }
        // Bytes with the longest codes.
        assert_eq!(
            huffman_decode(&hex("ffc7ffffddfffff17ffffff9")).unwrap(),
            [0, 255, 200, 10]
        );
    }

    #[test]
    fn bad_huffman_padding_and_eos_are_refused() {
        // "0" (00000) padded with zeros instead of ones.
        let err = huffman_decode(&[0x00]).unwrap_err();
        assert!(err.contains("padding"), "{err}");
        // EOS: thirty 1 bits.
        let err = huffman_decode(&[0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(err.contains("EOS"), "{err}");
    }

    #[test]
    fn the_requests_of_rfc_7541_c4_share_one_dynamic_table() {
        let mut d = Decoder::new(4096);
        let first = d
            .decode(&hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
            .unwrap();
        assert_eq!(
            text(&first),
            [
                (":method".into(), "GET".into()),
                (":scheme".into(), "http".into()),
                (":path".into(), "/".into()),
                (":authority".into(), "www.example.com".into()),
            ]
        );
        // The authority is now entry 62: "be" refers to it; "cache-control: no-cache" is new.
        let second = d.decode(&hex("828684be5886a8eb10649cbf")).unwrap();
        assert_eq!(
            text(&second)[3..],
            [
                (":authority".into(), "www.example.com".into()),
                ("cache-control".into(), "no-cache".into()),
            ]
        );
        assert_eq!(d.size, 57 + 53);
    }

    #[test]
    fn entries_are_evicted_oldest_first_and_a_size_update_is_bounded() {
        let mut d = Decoder::new(100);
        // Two literal fields with indexing: 'aa: bb' (36 bytes) then 'cc: dd' (36), then a
        // third, which evicts the first.
        let lit = |n: &str, v: &str| {
            let mut b = vec![0x40, n.len() as u8];
            b.extend_from_slice(n.as_bytes());
            b.push(v.len() as u8);
            b.extend_from_slice(v.as_bytes());
            b
        };
        let mut block = lit("aa", "bb");
        block.extend(lit("cc", "dd"));
        block.extend(lit("ee", "ff"));
        d.decode(&block).unwrap();
        assert_eq!(text(&d.decode(&[0xbe]).unwrap())[0].0, "ee");
        assert_eq!(text(&d.decode(&[0xbf]).unwrap())[0].0, "cc");
        let err = d.decode(&[0xc0]).unwrap_err();
        assert!(err.contains("index 64"), "{err}");
        let err = d.decode(&[0x3f, 0xe1, 0x1f]).unwrap_err();
        assert!(err.contains("over the 100 announced"), "{err}");
        d.decode(&[0x20]).unwrap();
        assert!(d.table.is_empty(), "size 0 empties the table");
    }

    #[test]
    fn literals_written_here_read_back_and_long_integers_round_trip() {
        let mut block = Vec::new();
        put_indexed(&mut block, 3);
        put_literal(&mut block, 4, ":path", &format!("/{}", "x".repeat(300)));
        put_literal(&mut block, 0, "te", "trailers");
        let fields = text(&Decoder::new(4096).decode(&block).unwrap());
        assert_eq!(fields[0], (":method".into(), "POST".into()));
        assert_eq!(fields[1].1.len(), 301);
        assert_eq!(fields[2], ("te".into(), "trailers".into()));
        let err = Decoder::new(4096).decode(&block[..5]).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
        // An index of 2^32 (127 + 0xffffff81 continued) is refused, not wrapped.
        let err = Decoder::new(4096)
            .decode(&[0xff, 0x81, 0xff, 0xff, 0xff, 0x0f])
            .unwrap_err();
        assert!(err.contains("over 32 bits"), "{err}");
    }
}
