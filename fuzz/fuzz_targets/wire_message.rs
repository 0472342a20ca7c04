#![no_main]
// Any frame body from a peer: decoding never panics, and whatever decodes
// re-encodes to the same bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = chapar_wire::Message::decode(data) {
        assert_eq!(&message.encode()[4..], data);
    }
    let _ = chapar_wire::ReceiptMessage::decode(data);
});
