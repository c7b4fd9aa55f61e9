//! The request's JSON as serde reads it: borrowed strings, shapes held inline, and `data`
//! flattened into f32 while it is parsed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
pub(super) struct WireRequest<'a> {
    #[serde(borrow)]
    pub(super) id: Option<JsonStr<'a>>,
    pub(super) parameters: Option<WireRequestParams>,
    #[serde(borrow)]
    pub(super) inputs: Option<Vec<WireInput<'a>>>,
    #[serde(borrow)]
    pub(super) outputs: Option<Vec<WireOutput<'a>>>,
}

#[derive(Deserialize, Default)]
pub(super) struct WireRequestParams {
    pub(super) binary_data_output: Option<bool>,
    /// Any JSON value, `null` included, so that every wrong one is reported.
    #[serde(default, deserialize_with = "any_value")]
    pub(super) timeout: Option<serde_json::Value>,
}

fn any_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
pub(super) struct WireInput<'a> {
    #[serde(borrow)]
    pub(super) name: JsonStr<'a>,
    #[serde(borrow)]
    pub(super) datatype: Option<JsonStr<'a>>,
    pub(super) shape: Option<Dims>,
    pub(super) parameters: Option<WireInputParams>,
    pub(super) data: Option<FlatData>,
}

#[derive(Deserialize, Default)]
pub(super) struct WireInputParams {
    pub(super) binary_data_size: Option<u64>,
    pub(super) shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize)]
pub(super) struct WireOutput<'a> {
    #[serde(borrow)]
    pub(super) name: JsonStr<'a>,
    pub(super) parameters: Option<WireOutputParams>,
}

#[derive(Deserialize)]
pub(super) struct WireOutputParams {
    pub(super) binary_data: Option<bool>,
    pub(super) classification: Option<u64>,
    pub(super) shared_memory_region: Option<IgnoredAny>,
}

/// A JSON string borrowed from the body unless it has escapes.
pub(super) struct JsonStr<'a>(pub(super) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

pub(super) const MAX_RANK: usize = 8;

/// A tensor shape or data nesting held inline (no allocation); dimensions past
/// `MAX_RANK` are counted but not kept.
#[derive(Clone, Copy, Default)]
pub(super) struct Dims {
    pub(super) dims: [i64; MAX_RANK],
    pub(super) rank: usize,
}

impl Dims {
    pub(super) fn as_slice(&self) -> &[i64] {
        &self.dims[..self.rank.min(MAX_RANK)]
    }
}

impl PartialEq for Dims {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank && self.as_slice() == other.as_slice()
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.rank > MAX_RANK {
            write!(f, ", ... ({} dimensions)", self.rank)?;
        }
        f.write_str("]")
    }
}

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("shape as a list of integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut out = Dims::default();
                while let Some(d) = seq.next_element::<i64>()? {
                    if out.rank < MAX_RANK {
                        out.dims[out.rank] = d;
                    }
                    out.rank += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `data`, flattened row-major into f32 while parsing, with its nesting recorded so it can
/// be checked against the shape once the shape is known (keys come in any order).
pub(super) struct FlatData {
    pub(super) values: Vec<f32>,
    /// Length of the lists at each depth (`-1`: none seen yet at that depth).
    pub(super) list_lens: [i64; MAX_RANK],
    /// Depth of the numbers (all must be at one depth).
    pub(super) leaf_depth: Option<usize>,
    pub(super) ragged: bool,
    pub(super) not_numbers: bool,
}

impl FlatData {
    pub(super) fn nesting(&self) -> Dims {
        let mut out = Dims::default();
        for &len in self.list_lens.iter().take_while(|&&l| l >= 0) {
            out.dims[out.rank] = len;
            out.rank += 1;
        }
        out
    }

    pub(super) fn push_number(&mut self, depth: usize, v: f32) {
        if depth == 0 {
            self.not_numbers = true;
            return;
        }
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => self.ragged = true,
            Some(_) => {}
        }
        self.values.push(v);
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = FlatData {
            // Enough for typical single-row requests without regrowing.
            values: Vec::with_capacity(128),
            list_lens: [-1; MAX_RANK],
            leaf_depth: None,
            ragged: false,
            not_numbers: false,
        };
        DataValue {
            sink: &mut out,
            depth: 0,
        }
        .deserialize(d)?;
        Ok(out)
    }
}

/// One JSON value inside `data`, at `depth` lists deep.
pub(super) struct DataValue<'s> {
    pub(super) sink: &'s mut FlatData,
    pub(super) depth: usize,
}

impl<'de> DeserializeSeed<'de> for DataValue<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DataValue<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let sink = self.sink;
        let mut len: i64 = 0;
        while seq
            .next_element_seed(DataValue {
                sink: &mut *sink,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        match sink.list_lens.get_mut(self.depth) {
            Some(slot) if *slot < 0 => *slot = len,
            Some(slot) if *slot != len => sink.ragged = true,
            Some(_) => {}
            None => sink.ragged = true,
        }
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    // Anything else is recorded rather than failed on, so the error can name the input
    // (its name may come after `data` in the object).
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.sink.not_numbers = true;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::v2codec::{CodecError, InferRequest, ModelIo, decode_infer, parse_header_len};

    fn io() -> ModelIo {
        ModelIo {
            input_name: "input".into(),
            features: 3,
            output_name: "probabilities".into(),
            classes: 2,
        }
    }

    fn decode(json: &str) -> Result<InferRequest, CodecError> {
        decode_infer(json.as_bytes(), None, &io())
    }

    #[test]
    fn names_are_borrowed_unless_escaped() {
        let w: WireOutput<'_> = serde_json::from_str(r#"{"name":"probabilities"}"#).unwrap();
        assert!(matches!(w.name.0, Cow::Borrowed("probabilities")));
        let w: WireOutput<'_> = serde_json::from_str(r#"{"name":"prob\u0061bilities"}"#).unwrap();
        assert!(matches!(w.name.0, Cow::Owned(ref s) if s == "probabilities"));
    }

    #[test]
    fn data_nesting_is_recorded() {
        let d: FlatData = serde_json::from_str("[[1,2,3],[4,5,6]]").unwrap();
        assert_eq!(d.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(d.nesting().as_slice(), [2, 3]);
        assert!(!d.ragged && !d.not_numbers);

        for ragged in ["[[1,2],[3]]", "[1,[2,3]]", "[[[1]],[2]]"] {
            let d: FlatData = serde_json::from_str(ragged).unwrap();
            assert!(d.ragged, "{ragged}");
        }
        for bad in [
            "5",
            "[1,\"2\"]",
            "[true]",
            "[null]",
            "[{\"a\":1}]",
            "{\"a\":[1]}",
        ] {
            let d: FlatData = serde_json::from_str(bad).unwrap();
            assert!(d.not_numbers, "{bad}");
        }
        let d: FlatData = serde_json::from_str("[[[[[[[[[1]]]]]]]]]").unwrap();
        assert!(d.ragged, "nesting deeper than MAX_RANK");
    }

    #[test]
    fn dims_display_and_rank_overflow() {
        let d: Dims = serde_json::from_str("[2, -1]").unwrap();
        assert_eq!(d.to_string(), "[2, -1]");
        let d: Dims = serde_json::from_str("[1,2,3,4,5,6,7,8,9,10]").unwrap();
        assert_eq!(d.rank, 10);
        assert_eq!(
            d.to_string(),
            "[1, 2, 3, 4, 5, 6, 7, 8, ... (10 dimensions)]"
        );
        assert!(serde_json::from_str::<Dims>("[2.5]").is_err());
    }

    #[test]
    fn json_error_keeps_position_out_of_message() {
        let e = decode("{\"inputs\": [").unwrap_err();
        match e {
            CodecError::Json {
                line,
                column,
                ref message,
            } => {
                assert_eq!((line, column), (1, 12));
                assert!(!message.contains("at line"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let e = decode(r#"{"inputs":[{"name":"input","shape":"x"}]}"#).unwrap_err();
        assert!(matches!(e, CodecError::Schema { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("invalid request at line 1 column"),
            "{e}"
        );
    }

    #[test]
    fn huge_shape_does_not_overflow_or_allocate() {
        let e = decode(
            r#"{"inputs":[{"name":"input","shape":[9223372036854775807,3],"datatype":"FP32","data":[1,2,3]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "input \"input\": shape [9223372036854775807, 3] needs 27670116110564327421 values, got 3"
        );
        let body = br#"{"inputs":[{"name":"input","shape":[9223372036854775807,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let e = decode_infer(body, Some(body.len()), &io()).unwrap_err();
        assert!(matches!(e, CodecError::BinarySize { .. }), "{e:?}");
    }

    #[test]
    fn header_len_parsing() {
        assert_eq!(parse_header_len(b"123").unwrap(), 123);
        assert_eq!(parse_header_len(b" 7 ").unwrap(), 7);
        for bad in [&b""[..], b"-1", b"+1", b"1e3", b"abc", b"\xff"] {
            let e = parse_header_len(bad).unwrap_err();
            assert_eq!(e.status(), 400);
        }
        assert_eq!(
            parse_header_len(b"abc").unwrap_err().to_string(),
            "invalid Inference-Header-Content-Length \"abc\": expected a byte count"
        );
    }
}
