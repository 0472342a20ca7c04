#![no_main]
// Any bytes: decode never panics, and whatever decodes re-encodes to the
// very same bytes (the encoding is canonical, so bundle ids are unique).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = chapar_format::Descriptor::decode(data) {
        assert_eq!(d.encode().expect("a decoded descriptor re-encodes"), data);
    }
});
