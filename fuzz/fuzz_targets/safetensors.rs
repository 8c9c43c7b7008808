#![no_main]
//! Any bytes given to the safetensors parser: tensors or an error, never a panic; every
//! tensor's byte length matches its dtype and shape, and what parses serializes again.

use divnet_fuzz::io::safetensors::{parse_safetensors, safetensors_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = parse_safetensors(data) {
        for (_, t) in &file.tensors {
            let bits = t.len() * t.dtype.bitsize();
            assert_eq!(t.bytes.len(), bits.div_ceil(8));
            let _ = t.to_f32();
        }
        let bytes = safetensors_bytes(&file).expect("a parsed file serializes");
        let again = parse_safetensors(&bytes).expect("a serialized file parses");
        assert_eq!(again.tensors.len(), file.tensors.len());
    }
});
