//! Lists of neuron indices to keep (`--keep FILE`): a JSON array of distinct 0-based indices.

use std::path::Path;

use crate::error::{Error, Result};

/// A JSON array of distinct 0-based indices < n (errors: not JSON, not an array of
/// non-negative integers, duplicates, out of range, empty), returned in file order.
pub fn read_keep_list(path: &Path, n: usize) -> Result<Vec<usize>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_keep_list(&bytes, n).map_err(|m| Error::format(path, m))
}

/// Parses a keep list from JSON text. Errors are messages, without the file name.
pub fn parse_keep_list(bytes: &[u8], n: usize) -> std::result::Result<Vec<usize>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let items = value.as_array().ok_or_else(|| {
        let report = if value.get("kept").is_some_and(|k| k.is_array()) {
            " (a report: its list is under \"kept\"; write that array to a file of its own)"
        } else if value.get("layers").is_some() {
            " (a report of compress: each layer's list is under \"layers\"[i][\"kept\"]; \
             write one to a file of its own)"
        } else {
            ""
        };
        format!(
            "expected a JSON array of neuron indices, got {}{report}",
            json_kind(&value)
        )
    })?;
    if items.is_empty() {
        return Err("the list of indices is empty: keep at least one neuron".into());
    }
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(items.len().min(n));
    for (pos, item) in items.iter().enumerate() {
        let idx = item.as_u64().ok_or_else(|| {
            format!("entry {pos} is {item}: expected a non-negative integer index")
        })?;
        let i = usize::try_from(idx)
            .ok()
            .filter(|&i| i < n)
            .ok_or_else(|| {
                format!("entry {pos}: index {idx} is out of range for a layer of {n} neurons")
            })?;
        if seen[i] {
            return Err(format!("entry {pos}: index {i} appears more than once"));
        }
        seen[i] = true;
        out.push(i);
    }
    Ok(out)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
