//! One journal record: a write (header, then its bytes) or the zeroing of
//! a range inside one chunk (header only), framed so that a replay tells
//! a whole record from a torn or damaged one.
//!
//! Header, 48 bytes, little-endian:
//! `magic u32 | kind u8 | 0 u8 ×3 | seq u64 | chunk u64 | offset u64 |
//! len u64 | crc u32 | 0 u32`, where `crc` is CRC-32 over the first 40
//! bytes and the payload (`len` bytes for a write, none for a zeroing).

pub const HEADER_LEN: usize = 48;
const MAGIC: u32 = 0x484e_4452; // "RDNH"
const CRC_AT: usize = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `len` bytes of data follow the header.
    Data,
    /// The range reads as zeros (a trim, a zeroing, a deleted chunk).
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Journal order: a later record wins where two overlap.
    pub seq: u64,
    pub chunk: u64,
    /// Chunk-relative.
    pub offset: u64,
    pub len: u64,
}

impl Header {
    /// Payload bytes after the header.
    pub fn payload_len(&self) -> u64 {
        match self.kind {
            Kind::Data => self.len,
            Kind::Zero => 0,
        }
    }

    /// The header's bytes for `payload` (which must be `payload_len` long).
    pub fn encode(&self, payload: &[u8]) -> [u8; HEADER_LEN] {
        debug_assert_eq!(payload.len() as u64, self.payload_len());
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[4] = match self.kind {
            Kind::Data => 1,
            Kind::Zero => 2,
        };
        bytes[8..16].copy_from_slice(&self.seq.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.chunk.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.offset.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.len.to_le_bytes());
        let crc = checksum(&bytes[..CRC_AT], payload);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The header in `bytes`, if it is one, with the CRC its payload must
    /// give ([`Header::verify`]). `None`: not a record (a torn tail, zeros,
    /// garbage).
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Option<(Header, u32)> {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) != MAGIC
            || bytes[5..8] != [0, 0, 0]
            || bytes[CRC_AT + 4..] != [0, 0, 0, 0]
        {
            return None;
        }
        let kind = match bytes[4] {
            1 => Kind::Data,
            2 => Kind::Zero,
            _ => return None,
        };
        let header = Header {
            kind,
            seq: u64_at(8),
            chunk: u64_at(16),
            offset: u64_at(24),
            len: u64_at(32),
        };
        let crc = u32::from_le_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
        Some((header, crc))
    }

    /// Whether `payload` is the one this header was written with.
    pub fn verify(bytes: &[u8; HEADER_LEN], payload: &[u8], crc: u32) -> bool {
        checksum(&bytes[..CRC_AT], payload) == crc
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let header = Header {
            kind: Kind::Data,
            seq: 7,
            chunk: 3,
            offset: 4096,
            len: 5,
        };
        let payload = b"hello";
        let bytes = header.encode(payload);
        let (decoded, crc) = Header::decode(&bytes).unwrap();
        assert_eq!(decoded, header);
        assert!(Header::verify(&bytes, payload, crc));
        assert!(!Header::verify(&bytes, b"hellp", crc), "payload damage");
        for bit in 0..HEADER_LEN * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            let caught = match Header::decode(&damaged) {
                None => true,
                Some((_, crc)) => !Header::verify(&damaged, payload, crc),
            };
            assert!(caught, "bit {bit} flipped unnoticed");
        }
        assert!(Header::decode(&[0; HEADER_LEN]).is_none(), "zeros");
    }

    #[test]
    fn a_zeroing_has_no_payload() {
        let header = Header {
            kind: Kind::Zero,
            seq: 1,
            chunk: 0,
            offset: 0,
            len: 1 << 20,
        };
        assert_eq!(header.payload_len(), 0);
        let bytes = header.encode(&[]);
        let (decoded, crc) = Header::decode(&bytes).unwrap();
        assert_eq!(decoded.kind, Kind::Zero);
        assert!(Header::verify(&bytes, &[], crc));
    }
}
