#![no_main]
// Any frame body from a peer: decoding never panics, whatever decodes
// re-encodes to the same bytes, and the by-value decoder agrees with the
// borrowing one.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let borrowed = chapar_wire::Message::decode(data);
    let owned = chapar_wire::Message::decode_owned(data.to_vec());
    assert_eq!(borrowed.is_ok(), owned.is_ok());
    if let (Ok(message), Ok(other)) = (borrowed, owned) {
        assert_eq!(&message.encode()[4..], data);
        assert_eq!(message, other);
    }
    let _ = chapar_wire::ReceiptMessage::decode(data);
});
