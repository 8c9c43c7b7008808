#![no_main]
//! Any bytes given to the IDX parser (raw or gzipped): an array or an error, never a panic,
//! never an allocation driven by the header alone (a gzip bomb or a lying dimension).

use divnet_fuzz::io::idx::parse_idx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_idx(data) {
        assert_eq!(a.shape.iter().product::<usize>(), a.data.len());
    }
});
