//! The Block1/Block2 option value (RFC 7959 §2.2): a block number, a
//! more-flag and a size exponent, in 0–3 bytes.

use crate::msg::DecodeError;

/// The largest block number (2^20 - 1).
pub const MAX_NUM: u32 = (1 << 20) - 1;
/// The largest usable size exponent (6: 1024-byte blocks; 7 is reserved).
pub const MAX_SZX: u8 = 6;

/// A block option value: block `num` of size 2^(szx+4), more blocks follow
/// when `more`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    num: u32,
    more: bool,
    szx: u8,
}

/// The block size for a size exponent (`szx` above 6 is taken as 6).
pub fn size_of(szx: u8) -> usize {
    1usize << (szx.min(MAX_SZX) + 4)
}

impl Block {
    /// A block value; `num` must be below 2^20 and `szx` at most 6.
    pub fn new(num: u32, more: bool, szx: u8) -> Result<Block, DecodeError> {
        if num > MAX_NUM {
            return Err(DecodeError::BlockNum(num));
        }
        if szx > MAX_SZX {
            return Err(DecodeError::BlockSzx(szx));
        }
        Ok(Block { num, more, szx })
    }

    /// Reads an option value (0–3 bytes; SZX 7 is refused).
    pub fn decode(value: &[u8]) -> Result<Block, DecodeError> {
        if value.len() > 3 {
            return Err(DecodeError::BlockLength(value.len()));
        }
        let v = value.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let szx = (v & 7) as u8;
        if szx == 7 {
            return Err(DecodeError::BlockSzx(szx));
        }
        Ok(Block { num: v >> 4, more: v & 8 != 0, szx })
    }

    /// The option value, in its minimal encoding.
    pub fn encode(&self) -> Vec<u8> {
        crate::option::encode_uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }

    /// The block number.
    pub fn num(&self) -> u32 {
        self.num
    }

    /// Whether more blocks follow.
    pub fn more(&self) -> bool {
        self.more
    }

    /// The size exponent (0–6).
    pub fn szx(&self) -> u8 {
        self.szx
    }

    /// The block size, 2^(szx+4) bytes (16 to 1024).
    pub fn size(&self) -> usize {
        size_of(self.szx)
    }

    /// The offset of this block's first byte in the whole body.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        // RFC 7959 §2.2: 0 bytes is NUM 0, M 0, SZX 0.
        assert_eq!(Block::decode(&[]).unwrap(), Block::new(0, false, 0).unwrap());
        assert_eq!(Block::new(0, false, 0).unwrap().encode(), Vec::<u8>::new());
        // "2:0/1/128" (RFC 7959 notation): NUM 0, M 1, SZX 3 is 0x0b.
        let b = Block::decode(&[0x0b]).unwrap();
        assert_eq!((b.num(), b.more(), b.szx(), b.size()), (0, true, 3, 128));
        assert_eq!(b.encode(), vec![0x0b]);
        // NUM 1, M 0, SZX 6 is 0x16.
        assert_eq!(Block::decode(&[0x16]).unwrap(), Block::new(1, false, 6).unwrap());
        // Two and three bytes.
        let b = Block::new(0x123, true, 2).unwrap();
        assert_eq!(b.encode(), vec![0x12, 0x3a]);
        assert_eq!(Block::decode(&b.encode()).unwrap(), b);
        let b = Block::new(MAX_NUM, false, 6).unwrap();
        assert_eq!(b.encode(), vec![0xff, 0xff, 0xf6]);
        assert_eq!(Block::decode(&b.encode()).unwrap(), b);
        assert_eq!(b.offset(), MAX_NUM as usize * 1024);
        for szx in 0..=6 {
            assert_eq!(Block::new(0, false, szx).unwrap().size(), 16 << szx);
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(Block::decode(&[0x07]), Err(DecodeError::BlockSzx(7)));
        assert_eq!(Block::decode(&[0x10, 0x0f]), Err(DecodeError::BlockSzx(7)));
        assert_eq!(Block::decode(&[1, 2, 3, 4]), Err(DecodeError::BlockLength(4)));
        assert_eq!(Block::new(MAX_NUM + 1, false, 0), Err(DecodeError::BlockNum(MAX_NUM + 1)));
        assert_eq!(Block::new(0, false, 7), Err(DecodeError::BlockSzx(7)));
    }
}
