//! A stream entry as read from Redis ([`Entry`]), and the decoding of `XREADGROUP` and
//! `XCLAIM` replies into entries.
//!
//! The replies are decoded from raw [`redis::Value`]s instead of the crate's typed
//! stream replies because those map field names to `String`: one entry with a
//! non-UTF-8 field name would fail the decoding of the *whole batch*, every time it is
//! read again, a poison pill. Here names and values stay bytes, and judging them is
//! the request parser's job, one entry at a time.

use redis::Value;

use super::request::{self, ExecutionRequest, InvalidEntry};

/// One field of a stream entry: name and value, as bytes.
pub type Field = (Vec<u8>, Vec<u8>);

/// One stream entry, fields exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stream id (`1700000000000-0`), used to acknowledge the entry.
    pub stream_id: String,
    pub fields: Vec<Field>,
}

impl Entry {
    /// The request this entry carries, or why it carries none.
    pub fn parse(&self) -> Result<ExecutionRequest, InvalidEntry> {
        request::parse(
            &self.stream_id,
            self.fields
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
    }
}

/// What a read returned.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub entries: Vec<Entry>,
    /// Ids still pending whose entry no longer exists in the stream (deleted or
    /// trimmed). Nothing can be done with them but acknowledge them.
    pub gone: Vec<String>,
}

/// Decodes an `XREADGROUP` reply for a single stream: nil (timed out), or (RESP2)
/// `[[key, [[id, [f, v, ...]], ...]]]`, or (RESP3) `{key: [[id, [f, v, ...]], ...]}`.
pub(crate) fn decode_read(reply: Value) -> Result<Decoded, String> {
    let streams = match reply {
        Value::Nil => return Ok(Decoded::default()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.swap_remove(1)),
                other => Err(format!("expected [key, entries], got {other:?}")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(format!("expected an array of streams, got {other:?}")),
    };
    let mut out = Decoded::default();
    for entries in streams {
        decode_entries(entries, &mut out)?;
    }
    Ok(out)
}

/// Decodes an `XCLAIM` reply (or a script returning one): `[[id, [f, v, ...]], ...]`.
pub(crate) fn decode_claim(reply: Value) -> Result<Decoded, String> {
    let mut out = Decoded::default();
    decode_entries(reply, &mut out)?;
    Ok(out)
}

fn decode_entries(entries: Value, out: &mut Decoded) -> Result<(), String> {
    let Value::Array(entries) = entries else {
        return Err(format!("expected an array of entries, got {entries:?}"));
    };
    for entry in entries {
        match entry {
            // Redis 6 XCLAIM put nil where a claimed entry had been deleted.
            Value::Nil => {}
            Value::Array(mut pair) if pair.len() == 2 => {
                let fields = pair.swap_remove(1);
                let id = text(pair.swap_remove(0)).ok_or("entry id is not a string")?;
                match fields {
                    // Reading pending entries by id (`0`): the entry was deleted.
                    Value::Nil => out.gone.push(id),
                    Value::Array(flat) => out.entries.push(Entry {
                        stream_id: id,
                        fields: pairs(flat),
                    }),
                    Value::Map(map) => out.entries.push(Entry {
                        stream_id: id,
                        fields: map.into_iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
                    }),
                    other => return Err(format!("entry {id}: fields are {other:?}")),
                }
            }
            other => return Err(format!("expected [id, fields], got {other:?}")),
        }
    }
    Ok(())
}

/// `[f1, v1, f2, v2, ...]` into pairs. An odd trailing element cannot come from Redis;
/// if it ever did it is dropped rather than trusted.
fn pairs(flat: Vec<Value>) -> Vec<Field> {
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((bytes(k), bytes(v)));
    }
    out
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        Value::VerbatimString { text, .. } => text.into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        _ => Vec::new(),
    }
}

pub(crate) fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn decodes_resp2_read_with_binary_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"stream"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"\xff"), bulk(b"\xfe"), bulk(b"id"), bulk(b"e")]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            ]),
        ])]);
        let d = decode_read(reply).expect("decodes");
        assert_eq!(d.entries.len(), 1);
        assert_eq!(d.entries[0].stream_id, "1-0");
        assert_eq!(d.entries[0].fields[0], (b"\xff".to_vec(), b"\xfe".to_vec()));
        assert_eq!(d.gone, vec!["2-0".to_owned()]);
        assert!(decode_read(Value::Nil).expect("nil").entries.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(decode_read(Value::Int(1)).is_err());
        assert!(decode_read(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(decode_claim(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(decode_claim(Value::Nil).is_err());
    }
}
