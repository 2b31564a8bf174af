//! The wire format: a 32-byte little-endian header, then `meta` (a segment
//! description, often empty), then the opaque payload.
//!
//! `kind: u32 | meta_len: u32 | call: u64 | batch: u64 | payload_len: u64`
//! (Python's `struct` format `<IIQQQ`; `perfkit._worker` reads the same).
//! The low byte of `kind` is the frame kind, the rest flags (FLAG_*).

use std::io::{self, Read, Write};

pub const HEADER_LEN: usize = 32;
/// Largest payload accepted (large buffers travel in segments, not in frames).
/// The meta is not limited beyond its u32 length: it names each large buffer
/// of a batch (`offset:length` or `address:length`, 10–40 bytes each), and a
/// result may hold any number of them (100,000 arrays over `max_nbytes`
/// made 2 MB), so any cap below the payload's would refuse replies that are
/// well within it.
const MAX_PAYLOAD: u64 = 1 << 36;

/// On a Result/Error frame: the worker still holds buffers of the batch's
/// segment (a task kept a reference), so the parent must not reuse it.
pub const FLAG_SEGMENT_RETAINED: u32 = 1;
/// On a Batch frame: the worker may leave its results' large buffers in its
/// own memory and send their addresses (`vm:<pid>` spans); the parent copies
/// them out (see `crate::remote`), then sends Release.
pub const FLAG_RESULTS_IN_PLACE: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FrameKind {
    /// parent → worker: the pickled function(s) of a call.
    Function = 1,
    /// parent → worker: a pickled batch of argument tuples.
    Batch = 2,
    /// worker → parent: the pickled results of a batch.
    Result = 3,
    /// worker → parent: a task of the batch raised; payload describes it.
    Error = 4,
    /// parent → worker: the results segment of the last reply is open here;
    /// the worker may close its own descriptor of it (it would otherwise keep
    /// that memory alive while idle, after the caller has dropped the results).
    Release = 5,
}

impl FrameKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Function,
            2 => Self::Batch,
            3 => Self::Result,
            4 => Self::Error,
            5 => Self::Release,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub flags: u32,
    pub call: u64,
    pub batch: u64,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

fn header(
    kind: FrameKind,
    flags: u32,
    call: u64,
    batch: u64,
    meta_len: usize,
    payload_len: usize,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(kind as u32 | flags << 8).to_le_bytes());
    h[4..8].copy_from_slice(&(meta_len as u32).to_le_bytes());
    h[8..16].copy_from_slice(&call.to_le_bytes());
    h[16..24].copy_from_slice(&batch.to_le_bytes());
    h[24..32].copy_from_slice(&(payload_len as u64).to_le_bytes());
    h
}

/// Writes one frame. Small frames go out in one `write` (one wake-up of the reader).
pub fn write_frame(
    w: &mut impl Write,
    kind: FrameKind,
    flags: u32,
    call: u64,
    batch: u64,
    meta: &[u8],
    payload: &[u8],
) -> io::Result<()> {
    let h = header(kind, flags, call, batch, meta.len(), payload.len());
    if meta.len() + payload.len() <= 64 * 1024 {
        let mut buf = Vec::with_capacity(HEADER_LEN + meta.len() + payload.len());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(meta);
        buf.extend_from_slice(payload);
        w.write_all(&buf)?;
    } else {
        let mut buf = Vec::with_capacity(HEADER_LEN + meta.len());
        buf.extend_from_slice(&h);
        buf.extend_from_slice(meta);
        w.write_all(&buf)?;
        w.write_all(payload)?;
    }
    w.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame header",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind_raw = u32::from_le_bytes(h[0..4].try_into().unwrap());
    let flags = kind_raw >> 8;
    let kind = FrameKind::from_u32(kind_raw & 0xff).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown frame kind {kind_raw}"),
        )
    })?;
    let meta_len = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let call = u64::from_le_bytes(h[8..16].try_into().unwrap());
    let batch = u64::from_le_bytes(h[16..24].try_into().unwrap());
    let payload_len = u64::from_le_bytes(h[24..32].try_into().unwrap());
    if payload_len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame length out of range",
        ));
    }
    let mut meta = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta)?;
    let mut payload = vec![0u8; payload_len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame {
        kind,
        flags,
        call,
        batch,
        meta,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_small_and_large() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Batch, 0, 7, 9, b"seg", b"hello").unwrap();
        let big = vec![42u8; 200_000];
        write_frame(&mut buf, FrameKind::Result, 0, 1, 2, b"", &big).unwrap();
        let mut r = &buf[..];
        let a = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((a.kind, a.call, a.batch), (FrameKind::Batch, 7, 9));
        assert_eq!((&a.meta[..], &a.payload[..]), (&b"seg"[..], &b"hello"[..]));
        let b = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(b.payload, big);
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn flags_ride_in_the_kind_word() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            FrameKind::Result,
            FLAG_SEGMENT_RETAINED,
            1,
            1,
            b"",
            b"",
        )
        .unwrap();
        assert_eq!(buf[1], FLAG_SEGMENT_RETAINED as u8); // (kind | flags << 8), little-endian
        let f = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.flags),
            (FrameKind::Result, FLAG_SEGMENT_RETAINED)
        );
        buf.clear();
        write_frame(
            &mut buf,
            FrameKind::Batch,
            FLAG_RESULTS_IN_PLACE,
            1,
            1,
            b"",
            b"",
        )
        .unwrap();
        let f = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!((f.kind, f.flags), (FrameKind::Batch, FLAG_RESULTS_IN_PLACE));
    }

    #[test]
    fn a_meta_naming_many_buffers_is_read() {
        // 100,000 spans of `address:length`: a result of that many arrays.
        let meta = "vm:1\t140737488355328:16".repeat(100_000);
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Result, 0, 1, 1, meta.as_bytes(), b"x").unwrap();
        let f = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!((f.meta.len(), &f.payload[..]), (meta.len(), &b"x"[..]));
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Error, 0, 1, 1, b"", b"abcdef").unwrap();
        let mut r = &buf[..buf.len() - 2];
        assert!(read_frame(&mut r).is_err());
        let mut r = &buf[..10];
        assert!(read_frame(&mut r).is_err());
        let mut bad = buf.clone();
        bad[0] = 99;
        assert!(read_frame(&mut &bad[..]).is_err());
    }
}
