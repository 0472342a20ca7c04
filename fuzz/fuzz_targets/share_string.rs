#![no_main]
// What a user pastes as a peer (a share string, a bridge line or a
// multiaddr): parsing never panics, and whatever parses as a share
// string prints back to a string that parses to the same thing and maps
// to a multiaddr that maps back to it.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = chapar_transport::parse_peer_addr(text);
    if let Ok(share) = text.parse::<chapar_transport::ShareAddr>() {
        let again: chapar_transport::ShareAddr = share.to_string().parse().expect("reparses");
        assert_eq!(again, share);
        assert_eq!(
            chapar_transport::ShareAddr::from_multiaddr(&share.to_multiaddr()),
            Some(share)
        );
    }
});
