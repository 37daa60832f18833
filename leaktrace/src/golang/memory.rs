//! Reading a running Go program's memory from outside, without stopping it
//! (`process_vm_readv`). Every read is bounded by its caller; a read that fails (unmapped, the
//! process gone) is an error the caller counts, never a panic.
use std::io;

/// The most one read may ask for: the largest thing read at once is the `allgs` pointer array
/// (8 bytes per goroutine), capped by [`super::census::MAX_GOROUTINES`].
pub const MAX_READ_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {len} bytes at {addr:#x} of pid {pid}: {source}")]
    Failed {
        pid: u32,
        addr: u64,
        len: usize,
        source: io::Error,
    },
    #[error("read of {len} bytes at {addr:#x} of pid {pid} came back short ({got})")]
    Short {
        pid: u32,
        addr: u64,
        len: usize,
        got: usize,
    },
    #[error("refusing to read {len} bytes at once from pid {pid}")]
    TooLarge { pid: u32, len: usize },
}

/// A target process's memory, read by address.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub pid: u32,
}

impl Memory {
    pub fn new(pid: u32) -> Self {
        Self { pid }
    }

    /// Fill `buf` from `addr` in the target, whole or not at all.
    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len();
        if len > MAX_READ_BYTES {
            return Err(ReadError::TooLarge { pid: self.pid, len });
        }
        if len == 0 {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        // SAFETY: `local` describes `buf`, which we own mutably for the call; the remote iovec
        // is only dereferenced by the kernel, in the target's address space.
        let got = unsafe { libc::process_vm_readv(self.pid as i32, &local, 1, &remote, 1, 0) };
        if got < 0 {
            return Err(ReadError::Failed {
                pid: self.pid,
                addr,
                len,
                source: io::Error::last_os_error(),
            });
        }
        let got = got as usize;
        if got != len {
            return Err(ReadError::Short {
                pid: self.pid,
                addr,
                len,
                got,
            });
        }
        Ok(())
    }

    /// Read regions of any lengths, laid one after another in `buf`, in one syscall (the caller
    /// passes at most IOV_MAX of them). Returns which were read whole; after a region the
    /// kernel could not read, each following one is retried alone.
    pub fn read_regions(&self, regions: &[(u64, usize)], buf: &mut [u8]) -> Vec<bool> {
        let total: usize = regions.iter().map(|(_, len)| len).sum();
        if total > buf.len() || total > MAX_READ_BYTES {
            return vec![false; regions.len()];
        }
        let mut local = Vec::with_capacity(regions.len());
        let mut rest = &mut buf[..total];
        for (_, len) in regions {
            let (slot, tail) = std::mem::take(&mut rest).split_at_mut(*len);
            local.push(libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: *len,
            });
            rest = tail;
        }
        let remote: Vec<libc::iovec> = regions
            .iter()
            .map(|&(addr, len)| libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: every local iovec describes a distinct slice of `buf` (split above), which we
        // own mutably for the call; the remote ones are only read by the kernel, in the
        // target's address space.
        let got = unsafe {
            libc::process_vm_readv(
                self.pid as i32,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        let mut whole_bytes = if got < 0 { 0 } else { got as usize };
        let mut read = Vec::with_capacity(regions.len());
        let mut at = 0;
        for &(addr, len) in regions {
            if whole_bytes >= len {
                whole_bytes -= len;
                read.push(true);
            } else {
                // The kernel stopped inside or before this region: the rest alone.
                whole_bytes = 0;
                read.push(self.read_into(addr, &mut buf[at..at + len]).is_ok());
            }
            at += len;
        }
        read
    }

    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; len.min(MAX_READ_BYTES)];
        if len > MAX_READ_BYTES {
            return Err(ReadError::TooLarge { pid: self.pid, len });
        }
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    pub fn u64(&self, addr: u64) -> Result<u64, ReadError> {
        let mut buf = [0u8; 8];
        self.read_into(addr, &mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    pub fn u32(&self, addr: u64) -> Result<u32, ReadError> {
        let mut buf = [0u8; 4];
        self.read_into(addr, &mut buf)?;
        Ok(u32::from_le_bytes(buf))
    }

    pub fn u8(&self, addr: u64) -> Result<u8, ReadError> {
        let mut buf = [0u8; 1];
        self.read_into(addr, &mut buf)?;
        Ok(buf[0])
    }

    /// A Go string header (pointer, length) at `addr`, its bytes read up to `max_len`.
    pub fn go_string(&self, addr: u64, max_len: usize) -> Result<String, ReadError> {
        let ptr = self.u64(addr)?;
        let len = self.u64(addr + 8)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(max_len);
        let bytes = self.read(ptr, len)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Little-endian integers out of a buffer read from the target; `None` past its end.
pub fn le_u64(buf: &[u8], offset: usize) -> Option<u64> {
    let bytes = buf.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

pub fn le_u32(buf: &[u8], offset: usize) -> Option<u32> {
    let bytes = buf.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

pub fn le_u8(buf: &[u8], offset: usize) -> Option<u8> {
    buf.get(offset).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_memory_and_refuses_bad_addresses() {
        let value: u64 = 0x1122_3344_5566_7788;
        let memory = Memory::new(std::process::id());
        assert_eq!(
            memory.u64(&raw const value as u64).expect("own memory"),
            value
        );
        assert!(memory.u64(8).is_err(), "page 0 is never mapped");
        assert!(matches!(
            memory.read(0x1000, MAX_READ_BYTES + 1),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn regions_of_any_length_in_one_call_and_the_unreadable_ones_named() {
        let values: Vec<u64> = (0..64).collect();
        let base = values.as_ptr() as u64;
        let regions = [(base, 16), (8, 8), (base + 80, 24), (base + 8, 8)];
        let memory = Memory::new(std::process::id());
        let mut buf = vec![0u8; 56];
        let read = memory.read_regions(&regions, &mut buf);
        assert_eq!(read, vec![true, false, true, true]);
        assert_eq!(le_u64(&buf, 8), Some(1));
        assert_eq!(le_u64(&buf, 24), Some(10));
        assert_eq!(le_u64(&buf, 40), Some(12));
        assert_eq!(le_u64(&buf, 48), Some(1));
        assert_eq!(memory.read_regions(&regions, &mut [0u8; 8]), vec![false; 4]);
    }

    #[test]
    fn buffer_integers_stop_at_the_end() {
        let buf = [1u8, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(le_u64(&buf, 0), Some(1));
        assert_eq!(le_u64(&buf, 2), None);
        assert_eq!(le_u32(&buf, 5), Some(9 << 24));
        assert_eq!(le_u8(&buf, 9), None);
        assert_eq!(le_u64(&buf, usize::MAX), None);
    }
}
