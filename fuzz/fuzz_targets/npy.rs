#![no_main]
//! Any bytes given to the npy parser: an array or an error message, never a panic, never an
//! allocation larger than the file justifies (libFuzzer's -rss_limit_mb / -malloc_limit_mb
//! catch those).

use divnet_fuzz::io::npy::{check_float_matrix, parse_npy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_npy(data) {
        // What the parser returns must be self-consistent: the shape's element count is
        // the number of elements decoded.
        let count: usize = a.shape.iter().product();
        assert_eq!(a.to_f64().len(), count);
        let _ = check_float_matrix(std::path::Path::new("fuzz.npy"), &a);
    }
});
