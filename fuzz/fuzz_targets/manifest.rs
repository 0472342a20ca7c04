#![no_main]
// The manifest JSON that closes every payload archive.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<chapar_bundle::manifest::Manifest>(data) {
        let _ = m.sha256sums();
        let _ = m.total_size();
    }
});
