#![no_main]
// A sealed header from the network, tried against a key: never panics.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static KEY: OnceLock<age::x25519::Identity> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let identity = KEY.get_or_init(age::x25519::Identity::generate);
    let _ = chapar_format::HeaderContents::open(data, std::slice::from_ref(identity));
});
