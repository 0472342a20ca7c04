#![no_main]
// The first byte picks the expected entry count; the rest is the index.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&n, rest)) = data.split_first() {
        if let Ok(ids) = chapar_format::index::decode(rest, usize::from(n)) {
            assert_eq!(chapar_format::index::encode(&ids), rest);
        }
    }
});
