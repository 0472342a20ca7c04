//! A pass-through reader that walks the tar block structure ahead of the
//! `tar` crate and refuses oversized extension entries.
//!
//! The `tar` crate reads GNU long-name/long-link and PAX extension entries
//! wholly into memory, whatever size their header claims. Anyone who knows
//! a recipient's public key can seal a payload, so without this guard a
//! hostile bundle could make `chapar open` allocate gigabytes.

use std::io::{self, Read};

/// Largest extension entry accepted (a path of 64 KiB is already absurd).
pub(crate) const MAX_EXTENSION_ENTRY: u64 = 64 * 1024;

/// Why the guard stopped the archive.
#[derive(Debug, thiserror::Error)]
#[error("an archive extension entry (type {kind:?}) claims {size} bytes, more than the {MAX_EXTENSION_ENTRY} allowed")]
pub(crate) struct OversizedExtension {
    kind: char,
    size: u64,
}

pub(crate) struct TarGuard<R> {
    inner: R,
    header: [u8; 512],
    filled: usize,
    skip: u64,
}

impl<R> TarGuard<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; 512],
            filled: 0,
            skip: 0,
        }
    }

    /// Size field of a header: octal ASCII, or base-256 when the top bit is set.
    fn size(field: &[u8]) -> Option<u64> {
        if field[0] & 0x80 != 0 {
            let mut v: u64 = u64::from(field[0] & 0x7f);
            for &b in &field[1..] {
                v = v.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(v);
        }
        let text = std::str::from_utf8(field).ok()?;
        let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
        if digits.is_empty() {
            return Some(0);
        }
        u64::from_str_radix(digits, 8).ok()
    }

    fn on_header(&mut self) -> io::Result<()> {
        let kind = self.header[156];
        // A header whose size we cannot read is left for `tar` to reject.
        let size = Self::size(&self.header[124..136]).unwrap_or(0);
        if matches!(kind, b'L' | b'K' | b'x' | b'g') && size > MAX_EXTENSION_ENTRY {
            return Err(io::Error::other(OversizedExtension {
                kind: char::from(kind),
                size,
            }));
        }
        self.skip = size.div_ceil(512).saturating_mul(512);
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while i < n {
            if self.skip > 0 {
                let k = self.skip.min((n - i) as u64);
                self.skip -= k;
                i += k as usize;
                continue;
            }
            let k = (512 - self.filled).min(n - i);
            self.header[self.filled..self.filled + k].copy_from_slice(&buf[i..i + k]);
            self.filled += k;
            i += k;
            if self.filled == 512 {
                self.filled = 0;
                self.on_header()?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn passes_normal_archives_through_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3000);
        h.set_mode(0o644);
        let long = "d/".repeat(200) + "file";
        b.append_data(&mut h, long, &vec![7u8; 3000][..])
            .expect("append");
        let bytes = b.into_inner().expect("finish");
        let mut out = Vec::new();
        // Tiny reads exercise headers split across calls.
        let mut g = TarGuard::new(io::BufReader::with_capacity(7, &bytes[..]));
        g.read_to_end(&mut out).expect("passes");
        assert_eq!(out, bytes);
    }

    #[test]
    fn refuses_a_huge_long_name_entry() {
        let mut bytes = header(b'L', 10 * 1024 * 1024 * 1024);
        bytes.extend([0u8; 1024]);
        let err = TarGuard::new(&bytes[..])
            .read_to_end(&mut Vec::new())
            .expect_err("refused");
        assert!(err.to_string().contains("claims"), "{err}");
    }
}
