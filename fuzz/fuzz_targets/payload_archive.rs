#![no_main]
// A decrypted payload is hostile input (anyone with a recipient's public
// key can seal one). Unpacking it never panics and never writes outside
// the destination folder.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("tempdir");
    let dest = root.path().join("dest");
    std::fs::create_dir(&dest).expect("mkdir");
    let _ = chapar_bundle::unpack_archive(data, &dest);
    let names: Vec<_> = std::fs::read_dir(root.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("dest")], "wrote outside dest");
});
