//! What a file is when it is not what a reader expected: the formats people hand over by
//! mistake (an npz archive for an npy array, a PyTorch checkpoint or a sharded checkpoint's
//! JSON index for a safetensors file), recognised from their first bytes so that the error
//! can say what to do instead of "bad magic".

/// A description of the format `bytes` start with, among those commonly given by mistake;
/// `None` when unrecognised.
pub fn foreign_format(bytes: &[u8]) -> Option<&'static str> {
    // A safetensors header (8 bytes of length, then JSON): a damaged one is not a pickle or
    // an index whatever its length's first byte happens to be.
    if bytes.get(8) == Some(&b'{') {
        return None;
    }
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| bytes[i]);
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(
            "a zip archive: an npz of numpy arrays (numpy.savez), or a PyTorch checkpoint \
             (torch.save, .pt / .bin)",
        )
    } else if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        Some("a Python pickle (torch.save's legacy format, or pickle.dump)")
    } else if bytes.starts_with(b"\x93NUMPY") {
        Some("an npy array (numpy.save)")
    } else if text_start == Some(b'{') || text_start == Some(b'[') {
        Some(
            "a JSON file (a sharded checkpoint's index, model.safetensors.index.json, lists \
             its shards)",
        )
    } else if bytes.starts_with(b"\x1f\x8b") {
        Some("a gzip stream")
    } else {
        None
    }
}

/// `message`, followed by what the file looks like and `advice`, when it is one of the
/// formats of [`foreign_format`].
pub fn explain(bytes: &[u8], message: String, advice: &str) -> String {
    match foreign_format(bytes) {
        Some(what) => format!("{message}; it looks like {what}: {advice}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_what_is_given_by_mistake() {
        assert!(foreign_format(b"PK\x03\x04rest").unwrap().contains("npz"));
        assert!(foreign_format(b"\x80\x02}q\x00")
            .unwrap()
            .contains("pickle"));
        assert!(foreign_format(b"  {\"weight_map\": {}}")
            .unwrap()
            .contains("index"));
        assert!(foreign_format(b"\x93NUMPY\x01\x00")
            .unwrap()
            .contains("npy"));
        assert_eq!(foreign_format(b"\x00\x00\x08\x03"), None);
        // A (truncated) safetensors whose header length starts with 0x80 0x02 or '{'.
        assert_eq!(
            foreign_format(b"\x80\x02\x00\x00\x00\x00\x00\x00{\"a\""),
            None
        );
        assert_eq!(foreign_format(b"{\x7b\x00\x00\x00\x00\x00\x00{\"a\""), None);
        let m = explain(
            b"PK\x03\x04",
            "not an npy file".into(),
            "save it with numpy.save",
        );
        assert_eq!(
            m,
            "not an npy file; it looks like a zip archive: an npz of numpy arrays \
             (numpy.savez), or a PyTorch checkpoint (torch.save, .pt / .bin): save it with \
             numpy.save"
        );
    }
}
