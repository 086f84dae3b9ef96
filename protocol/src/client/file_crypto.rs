//! Client-side encryption of a file (PROTOCOL.md §11.7): what makes an `encrypted` upload
//! unreadable to the server while any byte range of it can still be downloaded, decrypted
//! and verified on its own — a video seeks without fetching the file first.
//!
//! The file is cut into chunks of [`CHUNK_BYTES`] (the last one shorter; an empty file is
//! one empty chunk), and chunk `i` is sealed with XChaCha20-Poly1305 under the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár: a 19-byte random nonce prefix, the
//! chunk index as a 32-bit big-endian counter and a "last chunk" flag; RustCrypto's
//! `aead::stream::StreamBE32`). A chunk moved, swapped, altered or cut off fails its tag,
//! and so does a file truncated at a chunk boundary (its new last chunk was not sealed as
//! the last). The stored file is the sealed chunks back to back, so its size says the
//! plaintext size ([`plain_size`]) and where each chunk lies ([`encrypted_range`]).
//!
//! The key material ([`FileKey`], 51 bytes: a 32-byte key and the nonce prefix) is fresh
//! per file and travels with the message — inside the end-to-end envelope in encrypted
//! conversations — never to the server. Pure functions: the caller brings the randomness.
use std::ops::Range;

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// What sealing adds to each chunk (the Poly1305 tag).
pub const TAG_BYTES: u64 = 16;
const SEALED_CHUNK: u64 = CHUNK_BYTES + TAG_BYTES;
const KEY_BYTES: usize = 32;
const PREFIX_BYTES: usize = 19;

/// Why an encrypted file or range could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileCryptoError {
    /// Key material is [`FileKey::BYTES`] bytes (hex: twice that many digits).
    #[error("file key material must be {} bytes", FileKey::BYTES)]
    BadKey,
    /// A chunk failed its authentication: altered, moved, or not this key's.
    #[error("chunk {chunk} of the encrypted file does not verify (altered, or another key)")]
    Corrupt {
        /// Its index.
        chunk: u64,
    },
    /// The bytes given are not the sealed chunks the range needs (a short download).
    #[error("expected {want} encrypted bytes for the range, got {got}")]
    Length {
        /// What the range needs.
        want: u64,
        /// What was given.
        got: u64,
    },
    /// No encrypted file has this size (at least one tag per chunk).
    #[error("{0} bytes is not the size of an encrypted file")]
    BadSize(u64),
    /// The range ends past the end of the file.
    #[error("bytes {start}..{end} are past the end of a {size}-byte file")]
    PastEnd {
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Plaintext size.
        size: u64,
    },
}

/// One file's secret: its key and nonce prefix. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct FileKey {
    key: [u8; KEY_BYTES],
    prefix: [u8; PREFIX_BYTES],
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(redacted)")
    }
}

impl FileKey {
    /// Size of the key material.
    pub const BYTES: usize = KEY_BYTES + PREFIX_BYTES;

    /// A key from [`FileKey::BYTES`] fresh random bytes (the SDK's CSPRNG).
    pub fn from_random(random: [u8; Self::BYTES]) -> Self {
        Self::from_bytes(&random).expect("the right length")
    }

    /// The key material as bytes, to put in the message.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0; Self::BYTES];
        out[..KEY_BYTES].copy_from_slice(&self.key);
        out[KEY_BYTES..].copy_from_slice(&self.prefix);
        out
    }

    /// Key material from a message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FileCryptoError> {
        if bytes.len() != Self::BYTES {
            return Err(FileCryptoError::BadKey);
        }
        let mut key = [0; KEY_BYTES];
        let mut prefix = [0; PREFIX_BYTES];
        key.copy_from_slice(&bytes[..KEY_BYTES]);
        prefix.copy_from_slice(&bytes[KEY_BYTES..]);
        Ok(FileKey { key, prefix })
    }

    /// The key material as lower-case hex (how the SDKs hand it to apps).
    pub fn to_hex(&self) -> String {
        super::upload::hex(&self.to_bytes())
    }

    /// Key material from hex.
    pub fn from_hex(hex: &str) -> Result<Self, FileCryptoError> {
        if hex.len() != 2 * Self::BYTES || !hex.is_ascii() {
            return Err(FileCryptoError::BadKey);
        }
        let bytes: Result<Vec<u8>, _> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
            .collect();
        Self::from_bytes(&bytes.map_err(|_| FileCryptoError::BadKey)?)
    }

    fn stream(&self) -> StreamBE32<XChaCha20Poly1305> {
        let aead = XChaCha20Poly1305::new(&self.key.into());
        StreamBE32::from_aead(aead, &self.prefix.into())
    }
}

/// Chunks of a file of `plain` bytes (an empty file is one empty chunk).
pub fn chunks(plain: u64) -> u64 {
    plain.div_ceil(CHUNK_BYTES).max(1)
}

/// The stored size of a file of `plain` bytes.
pub fn encrypted_size(plain: u64) -> u64 {
    plain + chunks(plain) * TAG_BYTES
}

/// The plaintext size of an encrypted file of `encrypted` bytes.
pub fn plain_size(encrypted: u64) -> Result<u64, FileCryptoError> {
    let n = encrypted.div_ceil(SEALED_CHUNK).max(1);
    let plain = encrypted
        .checked_sub(n * TAG_BYTES)
        .ok_or(FileCryptoError::BadSize(encrypted))?;
    if encrypted_size(plain) != encrypted {
        return Err(FileCryptoError::BadSize(encrypted));
    }
    Ok(plain)
}

fn counter(chunk: u64) -> u32 {
    u32::try_from(chunk).expect("files stay below 2^32 chunks (256 TiB)")
}

/// Seal chunk `index` of a file of `plain_size` bytes (`chunk` is its plaintext).
pub fn encrypt_chunk(key: &FileKey, plain_size: u64, index: u64, chunk: &[u8]) -> Vec<u8> {
    let last = index + 1 == chunks(plain_size);
    let mut buf = chunk.to_vec();
    key.stream()
        .encrypt_in_place(counter(index), last, b"", &mut buf)
        .expect("a chunk is far below the AEAD's length limit");
    buf
}

/// Encrypt a whole file.
pub fn encrypt(key: &FileKey, plain: &[u8]) -> Vec<u8> {
    let size = plain.len() as u64;
    let mut out = Vec::with_capacity(encrypted_size(size) as usize);
    for i in 0..chunks(size) {
        let from = (i * CHUNK_BYTES) as usize;
        let to = ((i + 1) * CHUNK_BYTES).min(size) as usize;
        out.extend_from_slice(&encrypt_chunk(key, size, i, &plain[from..to]));
    }
    out
}

/// The sealed chunks that hold plaintext bytes `offset..offset + length` (`length` 0: to
/// the end) of a file of `plain_size` bytes: the range of the stored file to download.
pub fn encrypted_range(plain_size: u64, offset: u64, length: u64) -> Result<Range<u64>, FileCryptoError> {
    let end = if length == 0 {
        plain_size
    } else {
        offset.saturating_add(length)
    };
    if end > plain_size || offset > end {
        return Err(FileCryptoError::PastEnd {
            start: offset,
            end,
            size: plain_size,
        });
    }
    let first = (offset / CHUNK_BYTES).min(chunks(plain_size) - 1);
    let last = if end == offset { first } else { (end - 1) / CHUNK_BYTES };
    Ok(first * SEALED_CHUNK..((last + 1) * SEALED_CHUNK).min(encrypted_size(plain_size)))
}

/// Open plaintext bytes `offset..offset + length` (`length` 0: to the end) of a file of
/// `plain_size` bytes from `sealed`, the stored bytes at [`encrypted_range`] of the same
/// arguments. Every chunk is verified; only the asked bytes are returned.
pub fn decrypt_range(
    key: &FileKey,
    plain_size: u64,
    offset: u64,
    length: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, FileCryptoError> {
    let range = encrypted_range(plain_size, offset, length)?;
    if sealed.len() as u64 != range.end - range.start {
        return Err(FileCryptoError::Length {
            want: range.end - range.start,
            got: sealed.len() as u64,
        });
    }
    let stream = key.stream();
    let n = chunks(plain_size);
    let first = range.start / SEALED_CHUNK;
    let mut plain = Vec::with_capacity(sealed.len());
    for (k, piece) in sealed.chunks(SEALED_CHUNK as usize).enumerate() {
        let index = first + k as u64;
        let mut buf = piece.to_vec();
        stream
            .decrypt_in_place(counter(index), index + 1 == n, b"", &mut buf)
            .map_err(|_| FileCryptoError::Corrupt { chunk: index })?;
        plain.extend_from_slice(&buf);
    }
    let end = if length == 0 { plain_size } else { offset + length };
    let skip = (offset - first * CHUNK_BYTES) as usize;
    plain.truncate(skip + (end - offset) as usize);
    Ok(plain.split_off(skip))
}

/// Open a whole encrypted file.
pub fn decrypt(key: &FileKey, sealed: &[u8]) -> Result<Vec<u8>, FileCryptoError> {
    let size = plain_size(sealed.len() as u64)?;
    decrypt_range(key, size, 0, 0, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> FileKey {
        FileKey::from_random([seed; FileKey::BYTES])
    }

    fn file(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn sizes_round_trip_and_every_chunk_has_a_tag() {
        for plain in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES,
            5_000_000,
        ] {
            let e = encrypted_size(plain);
            assert_eq!(plain_size(e), Ok(plain), "{plain}");
            assert_eq!(e - plain, chunks(plain) * TAG_BYTES);
        }
        assert_eq!(plain_size(15), Err(FileCryptoError::BadSize(15)));
        assert_eq!(
            plain_size(SEALED_CHUNK + 5),
            Err(FileCryptoError::BadSize(SEALED_CHUNK + 5))
        );
    }

    #[test]
    fn any_range_decrypts_on_its_own() {
        let k = key(1);
        let plain = file(3 * CHUNK_BYTES as usize + 1234);
        let sealed = encrypt(&k, &plain);
        assert_eq!(sealed.len() as u64, encrypted_size(plain.len() as u64));
        let same = sealed.iter().zip(&plain).filter(|(a, b)| a == b).count();
        assert!(same < plain.len() / 100, "the stored bytes are not the plaintext");
        assert_eq!(decrypt(&k, &sealed).unwrap(), plain);
        let size = plain.len() as u64;
        for (offset, length) in [
            (0, 1),
            (5, 100),
            (CHUNK_BYTES - 3, 10),
            (CHUNK_BYTES, CHUNK_BYTES),
            (size - 7, 7),
            (size - 1, 0),
            (100_000, 0),
        ] {
            let r = encrypted_range(size, offset, length).unwrap();
            let got = decrypt_range(&k, size, offset, length, &sealed[r.start as usize..r.end as usize]).unwrap();
            let end = if length == 0 { size } else { offset + length };
            assert_eq!(got, &plain[offset as usize..end as usize], "{offset}+{length}");
        }
        assert!(matches!(
            encrypted_range(size, size - 1, 2),
            Err(FileCryptoError::PastEnd { .. })
        ));
        assert_eq!(decrypt(&k, &encrypt(&k, b"")).unwrap(), b"");
    }

    #[test]
    fn altered_swapped_truncated_or_foreign_chunks_fail() {
        let k = key(2);
        let plain = file(2 * CHUNK_BYTES as usize + 10);
        let sealed = encrypt(&k, &plain);
        let mut altered = sealed.clone();
        altered[CHUNK_BYTES as usize + 40] ^= 1;
        assert_eq!(decrypt(&k, &altered), Err(FileCryptoError::Corrupt { chunk: 1 }));
        let c = SEALED_CHUNK as usize;
        let mut swapped = sealed[c..2 * c].to_vec();
        swapped.extend_from_slice(&sealed[..c]);
        swapped.extend_from_slice(&sealed[2 * c..]);
        assert_eq!(decrypt(&k, &swapped), Err(FileCryptoError::Corrupt { chunk: 0 }));
        // Cut at a chunk boundary: the new last chunk was not sealed as the last.
        assert_eq!(
            decrypt(&k, &sealed[..2 * c]),
            Err(FileCryptoError::Corrupt { chunk: 1 })
        );
        assert_eq!(decrypt(&key(3), &sealed), Err(FileCryptoError::Corrupt { chunk: 0 }));
        let r = encrypted_range(plain.len() as u64, 0, 10).unwrap();
        assert!(matches!(
            decrypt_range(&k, plain.len() as u64, 0, 10, &sealed[..r.end as usize - 1]),
            Err(FileCryptoError::Length { .. })
        ));
    }

    #[test]
    fn key_material_round_trips_and_is_never_printed() {
        let k = key(9);
        assert_eq!(FileKey::from_hex(&k.to_hex()), Ok(k.clone()));
        assert_eq!(FileKey::from_bytes(&k.to_bytes()), Ok(k.clone()));
        assert_eq!(FileKey::from_hex("abc"), Err(FileCryptoError::BadKey));
        assert_eq!(
            FileKey::from_hex(&"zz".repeat(FileKey::BYTES)),
            Err(FileCryptoError::BadKey)
        );
        assert_eq!(format!("{k:?}"), "FileKey(redacted)");
    }
}
