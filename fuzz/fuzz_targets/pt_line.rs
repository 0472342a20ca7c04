#![no_main]
// A line a pluggable transport's managed proxy prints: parsing never
// panics, whatever the program (or whoever replaced it) writes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chapar_transport::pt::ProxyLine::parse(&String::from_utf8_lossy(data));
});
