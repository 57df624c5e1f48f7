//! Decompression bombs for the hardening tests: FLAC files of digital silence, hours long in a few
//! hundred kilobytes, written here (a FLAC encoder of CONSTANT subframes is a few lines) so the
//! tests need no encoder and the repository holds no large file.

/// CRC-8 (polynomial 0x07) over a FLAC frame header.
fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// CRC-16 (polynomial 0x8005) over a whole FLAC frame.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// FLAC's UTF-8-style coding of a frame number.
fn coded_number(n: u32, out: &mut Vec<u8>) {
    match n {
        0..=0x7F => out.push(n as u8),
        0x80..=0x7FF => out.extend([0xC0 | (n >> 6) as u8, 0x80 | (n & 0x3F) as u8]),
        0x800..=0xFFFF => out.extend([
            0xE0 | (n >> 12) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ]),
        _ => out.extend([
            0xF0 | (n >> 18) as u8,
            0x80 | ((n >> 12) & 0x3F) as u8,
            0x80 | ((n >> 6) & 0x3F) as u8,
            0x80 | (n & 0x3F) as u8,
        ]),
    }
}

/// A mono 16-bit FLAC of `seconds` of silence at `rate` Hz. With `declare_length` false the
/// STREAMINFO block says the length is unknown (as a streamed encoder may), so only decoding
/// finds it out.
pub fn silent_flac(rate: u32, seconds: u64, declare_length: bool) -> Vec<u8> {
    const BLOCK: u64 = 65_535;
    let total = rate as u64 * seconds;
    let mut out = b"fLaC".to_vec();
    // STREAMINFO, the last metadata block (flag 0x80), 34 bytes.
    out.extend([0x80, 0x00, 0x00, 0x22]);
    out.extend((BLOCK as u16).to_be_bytes()); // min block size
    out.extend((BLOCK as u16).to_be_bytes()); // max block size
    out.extend([0, 0, 0, 0, 0, 0]); // frame sizes unknown
    let samples = if declare_length { total } else { 0 };
    // 20 bits rate, 3 bits channels-1 (0), 5 bits bits-per-sample-1 (15), 36 bits samples.
    let packed: u64 = ((rate as u64) << 44) | (15u64 << 36) | samples;
    out.extend(packed.to_be_bytes());
    out.extend([0u8; 16]); // MD5 unknown
    let mut frame_no = 0u32;
    let mut left = total;
    while left > 0 {
        let n = left.min(BLOCK);
        let mut f = vec![0xFF, 0xF8];
        // Block size: 16-bit (n - 1) at the end of the header; rate: from STREAMINFO.
        f.push(0x70);
        // Mono; sample size from STREAMINFO.
        f.push(0x00);
        coded_number(frame_no, &mut f);
        f.extend(((n - 1) as u16).to_be_bytes());
        f.push(crc8(&f));
        // One CONSTANT subframe of value 0 (16 bits).
        f.extend([0x00, 0x00, 0x00]);
        let crc = crc16(&f);
        f.extend(crc.to_be_bytes());
        out.extend(f);
        frame_no += 1;
        left -= n;
    }
    out
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/self/status")
}
