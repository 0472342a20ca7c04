#![no_main]
// Any frame body from a peer: decoding never panics, whatever decodes
// re-encodes to the same bytes, and the split decoder (what the mesh reads
// with) agrees with the borrowing one.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let borrowed = chapar_wire::Message::decode(data);
    let lead = data.len().min(chapar_wire::Message::SPLIT_HEAD);
    let owned = chapar_wire::Message::decode_split(&data[..lead], data[lead..].to_vec());
    assert_eq!(borrowed.is_ok(), owned.is_ok());
    if let (Ok(message), Ok(other)) = (borrowed, owned) {
        assert_eq!(&message.encode()[4..], data);
        assert_eq!(message, other);
    }
    let _ = chapar_wire::ReceiptMessage::decode(data);
});
