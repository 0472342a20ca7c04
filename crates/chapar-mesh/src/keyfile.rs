//! The node's libp2p key on disk, so its peer id survives restarts.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::identity::Keypair;

/// File holding the node's libp2p key, inside its data directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Reads the node key from `dir`, or makes one and writes it there (mode
/// 0600, never over an existing file) the first time.
pub fn load_or_create_node_key(dir: &Path) -> std::io::Result<Keypair> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(NODE_KEY_FILE);
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            Keypair::from_protobuf_encoding(&bytes).map_err(|_| invalid("not a libp2p key"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|_| invalid("could not encode the new key"))?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}
